"""The token check, as ASGI middleware so it covers pages, the API and WebSockets alike.

A token arrives once in the page's address (``/?token=...``), is kept in an HttpOnly cookie, and may also be
sent as the ``X-PersonaLive-Token`` header (scripts, the latency benchmark)."""

from __future__ import annotations

import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

COOKIE = "personalive_token"
HEADER = b"x-personalive-token"

DENIED_PAGE = """<!doctype html><meta charset="utf-8"><title>personalive: token needed</title>
<body style="font-family:sans-serif;max-width:40em;margin:4em auto">
<h1>A token is needed</h1><p>This server was started with <code>--token</code>. Open the address it printed,
which ends in <code>?token=...</code>.</p></body>"""


class TokenMiddleware:
    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if self.token is None or scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        given_in_query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
        headers = dict(scope.get("headers") or [])
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get(b"cookie", b"").decode("latin-1"))
        except Exception:  # noqa: BLE001 - a malformed cookie header is just no token
            pass
        candidates = [given_in_query, headers.get(HEADER, b"").decode("latin-1") or None,
                      cookie[COOKIE].value if COOKIE in cookie else None]
        if not any(c is not None and secrets.compare_digest(c.encode(), self.token.encode()) for c in candidates):
            return await self._deny(scope, send)
        if given_in_query is not None and scope["type"] == "http":
            return await self.app(scope, receive, self._with_cookie(send))
        return await self.app(scope, receive, send)

    def _with_cookie(self, send):
        async def wrapped(message):
            if message["type"] == "http.response.start":
                value = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode("latin-1")
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", value)]}
            await send(message)
        return wrapped

    async def _deny(self, scope, send):
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401})
            return
        wants_json = scope["path"].startswith("/api/")
        body = (b'{"error": "a valid token is needed (open the address the server printed)"}' if wants_json
                else DENIED_PAGE.encode())
        kind = b"application/json" if wants_json else b"text/html; charset=utf-8"
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
