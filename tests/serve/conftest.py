"""A live server in this process: uvicorn on a thread, on a free port, around the app under test."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("aiortc", reason="the serve extra is not installed (pip install -e '.[serve]')")


class RunningServer:
    def __init__(self, app, port: int):
        import uvicorn

        self.app, self.port = app, port
        self.url = f"http://127.0.0.1:{port}/"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="test-uvicorn")

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    @property
    def manager(self):
        app = self.app
        while not hasattr(app, "state"):  # under the token middleware
            app = app.app
        return app.state.manager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve_app():
    """``serve_app(method_name, size=..., **settings)`` → a started :class:`RunningServer` (stopped after)."""
    from personalive_cli.pipeline.animate import build_method
    from personalive_cli.serve.app import ServeSettings, create_app

    with contextlib.ExitStack() as stack:
        def start(method: str = "still", size: int = 128, weights=None, **settings) -> RunningServer:
            built = build_method(method, size, "cpu", "auto", 42, str(weights) if weights else None)
            settings.setdefault("crop", "none")
            app = create_app(built, ServeSettings(**settings))
            return stack.enter_context(RunningServer(app, free_port()))

        yield start
