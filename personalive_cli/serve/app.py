"""The ASGI application: one page, its assets, a small JSON API and the two media transports.

No path from a request is ever opened: the page's assets are read from the package once, at start, into
a table of fixed names, and portraits live in memory under random ids."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import secrets
import struct
import threading
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse, Response

from personalive_cli.registry import Method
from personalive_cli.serve.auth import TokenMiddleware
from personalive_cli.serve.latest import LatestQueue
from personalive_cli.serve.portraits import Portrait, prepare_portrait
from personalive_cli.serve.sessions import Busy, InputFrame, SessionManager
from personalive_cli.serve.uploads import UploadError, UploadLimits, decode_camera_jpeg, encode_jpeg

ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
KEPT_PORTRAITS = 32          # uploads kept in memory (the oldest go first)
CAMERA_FRAME_LIMIT = 2 << 20  # bytes of one WebSocket camera frame
WS_IN_HEADER = struct.Struct("<dI")  # capture time (ms, the page's clock), frame id


@dataclass
class ServeSettings:
    max_sessions: int = 1
    crop: str = "auto"
    seed: int = 42
    token: str | None = None
    limits: UploadLimits = field(default_factory=UploadLimits)
    connect_timeout: float = 15.0


BUSY_PAGE = """<!doctype html><meta charset="utf-8"><title>personalive: busy</title>
<body style="font-family:sans-serif;max-width:40em;margin:4em auto">
<h1>The server is busy</h1><p>{message}</p><p><a href="">Try again</a></p></body>"""


def _static(name: str) -> bytes:
    return resources.files("personalive_cli.serve").joinpath("static", name).read_bytes()


def create_app(method: Method, settings: ServeSettings) -> FastAPI:
    """The server for ``method`` (built already: its weights load once, every viewer shares it)."""
    manager = SessionManager(method, settings.max_sessions, settings.crop, settings.seed, settings.connect_timeout)
    portraits: collections.OrderedDict[str, Portrait] = collections.OrderedDict()
    portraits_lock = threading.Lock()
    peers: set = set()
    page = _static("index.html")
    assets = {name: _static(name) for name in ASSETS}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for peer in list(peers):
            await peer.close()
        await asyncio.get_running_loop().run_in_executor(None, manager.close_all)

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.manager = manager

    @app.get("/")
    def index():
        if manager.active >= manager.max_sessions:
            return HTMLResponse(BUSY_PAGE.format(message=_busy_message(manager)), status_code=503)
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}")
    def asset(name: str):
        if name not in assets:
            return Response("not found", status_code=404)
        return Response(assets[name], media_type=ASSETS[name])

    @app.get("/api/status")
    def status():
        return {"method": method.name, "size": method.size, "frames_per_step": method.frames_per_step,
                "active": manager.active, "max_sessions": manager.max_sessions, "crop": settings.crop,
                "transports": ["webrtc", "websocket"], "max_upload_bytes": settings.limits.max_bytes}

    @app.post("/api/portrait")
    async def upload(request: Request):
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > settings.limits.max_bytes:
                return _error(413, f"the image is over the {settings.limits.max_bytes / 1e6:.0f} MB limit")
        try:
            portrait = await asyncio.get_running_loop().run_in_executor(
                None, prepare_portrait, bytes(data), settings.limits, method.size, settings.crop)
        except UploadError as exc:
            return _error(422, str(exc))
        with portraits_lock:
            portrait_id = secrets.token_urlsafe(12)
            portraits[portrait_id] = portrait
            while len(portraits) > KEPT_PORTRAITS:
                portraits.popitem(last=False)
        preview = base64.b64encode(encode_jpeg(portrait.reference, 90)).decode()
        return {"portrait": portrait_id, "face": portrait.face, "message": portrait.message,
                "width": portrait.width, "height": portrait.height, "preview": f"data:image/jpeg;base64,{preview}"}

    @app.post("/api/sessions")
    async def open_session(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the request is not JSON")
        if not isinstance(body, dict):
            return _error(400, "the request is not a JSON object")
        with portraits_lock:
            portrait = portraits.get(str(body.get("portrait")))
        if portrait is None:
            return _error(404, "upload a portrait first (or again: the server no longer has that one)")
        transport = body.get("transport")
        if transport not in ("webrtc", "websocket"):
            return _error(400, "transport must be webrtc or websocket")
        try:
            session = manager.open(portrait.reference, transport)
        except Busy as exc:
            return JSONResponse({"error": str(exc), "busy": True}, status_code=503)
        if transport == "websocket":
            return {"session": session.id}
        from personalive_cli.serve.webrtc import WebRTCPeer

        peer = WebRTCPeer(session, peers.discard)
        peers.add(peer)
        try:
            answer = await peer.answer(str(body.get("sdp", "")), str(body.get("type", "offer")))
        except (ValueError, TypeError) as exc:
            await peer.close()
            return _error(400, f"bad WebRTC offer: {exc}")
        return {"session": session.id, "sdp": answer.sdp, "type": answer.type}

    @app.post("/api/sessions/{session_id}/close")
    async def close_session(session_id: str):
        """What the page sends when it stops or is closed (a beacon): the slot is free at once."""
        session = manager.get(session_id)
        if session is not None:
            for peer in list(peers):
                if peer.session is session:
                    await peer.close()
            await asyncio.get_running_loop().run_in_executor(None, session.close)
        return {"closed": session is not None}

    @app.websocket("/ws/{session_id}")
    async def websocket_session(ws: WebSocket, session_id: str):
        session = manager.get(session_id)
        if session is None or session.transport != "websocket" or session.connected:
            await ws.close(code=4404)
            return
        await ws.accept()
        loop = asyncio.get_running_loop()
        outbox = LatestQueue(capacity=2)

        def on_output(frame: np.ndarray, tag, stats: dict) -> None:
            header = {"type": "frame", "id": tag[1], "capture": tag[0], **stats, "send_dropped": outbox.dropped}
            loop.call_soon_threadsafe(outbox.put, _ws_frame(header, encode_jpeg(frame)))

        def on_error(message: str) -> None:
            loop.call_soon_threadsafe(outbox.put, json.dumps({"type": "error", "message": message}))

        async def sender():
            while True:
                item = await outbox.get()
                await (ws.send_bytes(item) if isinstance(item, bytes) else ws.send_text(item))

        session.start(on_output, on_error)
        sending = asyncio.ensure_future(sender())
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes") is not None:
                    _offer_jpeg(session, message["bytes"])
                elif message.get("text") is not None:
                    _control(session, message["text"])
        except WebSocketDisconnect:
            pass
        finally:
            sending.cancel()
            await loop.run_in_executor(None, session.close)

    return TokenMiddleware(app, settings.token) if settings.token else app


def _offer_jpeg(session, data: bytes) -> None:
    if len(data) <= WS_IN_HEADER.size or len(data) > CAMERA_FRAME_LIMIT:
        return
    capture, frame_id = WS_IN_HEADER.unpack_from(data)
    jpeg = data[WS_IN_HEADER.size:]

    def decode():
        return decode_camera_jpeg(jpeg), (capture, frame_id)  # None: skipped, counted as dropped

    session.offer(InputFrame(decode=decode))


def _control(session, text: str) -> None:
    try:
        data = json.loads(text)
    except ValueError:
        return
    if isinstance(data, dict) and data.get("type") == "reset":
        seed = data.get("seed")
        session.reset(seed if isinstance(seed, int) else None)


def _ws_frame(header: dict, jpeg: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<I", len(encoded)) + encoded + jpeg


def _busy_message(manager: SessionManager) -> str:
    return (f"All {manager.max_sessions} live session{'s are' if manager.max_sessions > 1 else ' is'} in use. "
            "Each viewer gets the GPU to themselves rather than everyone getting a slower animation; "
            "try again when a session ends.")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
