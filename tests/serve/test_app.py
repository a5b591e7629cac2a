import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from helpers import invoke, one_error_line
from PIL import Image


def _request(url, data=None, headers=None, method=None):
    """(status, headers, body) without raising on error statuses."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _jpeg(value=128, size=(64, 64)) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def _post_json(url, body):
    return _request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})


def _upload(server, data, headers=None):
    status, _, body = _request(server.url + "api/portrait", data, headers or {}, "POST")
    return status, json.loads(body)


def test_page_assets_and_status(serve_app):
    server = serve_app("still")
    status, headers, body = _request(server.url)
    assert status == 200 and b"personalive" in body and b"static/app.js" in body
    for name in ("app.js", "style.css"):
        assert _request(server.url + "static/" + name)[0] == 200
    # only the package's own assets, by name: no path from the client is opened
    for path in ("static/index.html.bak", "static/..%2Fapp.py", "static/%2E%2E%2F%2E%2E%2Fpyproject.toml"):
        assert _request(server.url + path)[0] == 404
    info = json.loads(_request(server.url + "api/status")[2])
    assert info["method"] == "still" and info["size"] == 128 and info["active"] == 0


def test_uploads_are_validated_with_a_message(serve_app):
    from personalive_cli.serve.uploads import UploadLimits

    server = serve_app("still", limits=UploadLimits(max_bytes=50_000))
    status, body = _upload(server, b"not an image" * 20)
    assert status == 422 and "not an image" in body["error"]
    status, body = _upload(server, os.urandom(60_000))
    assert status == 413 and "limit" in body["error"]
    status, body = _upload(server, _jpeg())  # a flat grey square: no face in it
    assert status == 422 and "no face" in body["error"]


def test_a_portrait_upload_gives_a_preview(serve_app, demo_ref):
    server = serve_app("still")
    status, body = _upload(server, demo_ref.read_bytes())
    assert status == 200 and body["face"] is True and body["message"].startswith("face found")
    assert body["preview"].startswith("data:image/jpeg;base64,")


def test_websocket_session_end_to_end_then_closing_frees_it(serve_app, demo_ref):
    from websockets.sync.client import connect

    server = serve_app("still")
    portrait = _upload(server, demo_ref.read_bytes())[1]["portrait"]
    status, _, body = _post_json(server.url + "api/sessions", {"portrait": portrait, "transport": "websocket"})
    assert status == 200
    session = json.loads(body)["session"]
    assert server.manager.active == 1
    with connect(f"ws://127.0.0.1:{server.port}/ws/{session}") as ws:
        for i in range(5):  # one at a time: frames sent faster than the method runs are dropped
            ws.send(struct.pack("<dI", 1000.5 + i, i) + _jpeg(40 * i))
            data = ws.recv(timeout=20)
            n = struct.unpack_from("<I", data)[0]
            header = json.loads(data[4:4 + n])
            assert header["id"] == i and header["capture"] == 1000.5 + i  # the frame it animates, carried back
            frame = np.asarray(Image.open(io.BytesIO(data[4 + n:])))
            assert frame.shape == (128, 128, 3) and frame.std() > 10  # the portrait, not a blank
    deadline = time.monotonic() + 5
    while server.manager.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.manager.active == 0  # the viewer went away: the slot is free at once


def test_extra_viewers_are_told_the_server_is_busy(serve_app, demo_ref):
    server = serve_app("still", max_sessions=1)
    portrait = _upload(server, demo_ref.read_bytes())[1]["portrait"]
    first = json.loads(_post_json(server.url + "api/sessions", {"portrait": portrait, "transport": "websocket"})[2])
    status, _, body = _post_json(server.url + "api/sessions", {"portrait": portrait, "transport": "websocket"})
    assert status == 503 and json.loads(body)["busy"] and "1 of 1" in json.loads(body)["error"]
    status, _, page = _request(server.url)
    assert status == 503 and b"busy" in page
    assert _request(server.url + f"api/sessions/{first['session']}/close", b"", method="POST")[0] == 200
    assert _request(server.url)[0] == 200


def test_bad_session_requests(serve_app):
    server = serve_app("still")
    assert _post_json(server.url + "api/sessions", {"portrait": "nope", "transport": "websocket"})[0] == 404
    assert _request(server.url + "api/sessions", b"{", {"Content-Type": "application/json"})[0] == 400


def test_with_a_token_every_request_needs_it(serve_app):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    server = serve_app("still", token="s3cret-token")
    assert _request(server.url)[0] == 401
    assert _request(server.url + "api/status")[0] == 401
    assert _request(server.url + "?token=wrong-token")[0] == 401
    assert _request(server.url + "static/app.js")[0] == 401
    status, headers, _ = _request(server.url + "?token=s3cret-token")
    assert status == 200 and "personalive_token=s3cret-token" in headers["set-cookie"]
    assert "HttpOnly" in headers["set-cookie"]
    assert _request(server.url + "api/status", headers={"Cookie": "personalive_token=s3cret-token"})[0] == 200
    assert _request(server.url + "api/status", headers={"X-PersonaLive-Token": "s3cret-token"})[0] == 200
    with pytest.raises((InvalidStatus, Exception)):
        with connect(f"ws://127.0.0.1:{server.port}/ws/whatever") as ws:
            ws.recv(timeout=5)


@pytest.mark.parametrize(("args", "says"), [
    (["--host", "0.0.0.0"], "pass --token"),
    (["--host", "0.0.0.0", "--token", "short"], "8 to 256"),
    (["--token", "long-enough-token", "--no-auth"], "contradict"),
    (["--max-sessions", "0"], "at least 1"),
    (["--crop", "sideways"], "unknown --crop"),
    (["--method", "nosuch"], "unknown method"),
])
def test_bad_serve_options_are_one_error_line(args, says):
    r = invoke("serve", "--method", "still", *args)
    assert says in one_error_line(r)


def test_a_taken_port_is_one_error_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        r = invoke("serve", "--method", "still", "--crop", "none", "--port", s.getsockname()[1])
    assert "cannot listen on" in one_error_line(r)


def test_ctrl_c_stops_the_server_cleanly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "personalive_cli.cli.app", "serve", "--method", "still",
                             "--crop", "none", "--size", "128", "--port", str(port)],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert f"127.0.0.1:{port}" in line and "Ctrl-C" in line
        assert _request(f"http://127.0.0.1:{port}/api/status")[0] == 200
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(20) == 0, rest
        assert "serve: stopped" in rest and "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
