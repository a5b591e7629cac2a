"""The page in a real browser: headless Chromium from the system's packages (never a browser download),
its fake camera fed from the shared demo driving video, driven by Playwright."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")

REPO = Path(__file__).resolve().parents[2]
FRAMES_WANTED = 50


def _chromium() -> str | None:
    named = os.environ.get("PERSONALIVE_CHROMIUM")
    if named:
        return named
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


pytestmark = pytest.mark.skipif(_chromium() is None, reason="no system Chromium (apt-get install chromium; "
                                "or set PERSONALIVE_CHROMIUM)")


@pytest.fixture(scope="module")
def camera_y4m(tmp_path_factory, demo_drive, ffmpeg) -> Path:
    """Six seconds of the demo driving video as y4m, what Chromium's fake camera reads (and loops)."""
    path = tmp_path_factory.mktemp("camera") / "camera.y4m"
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(demo_drive), "-t", "6",
                    "-vf", "scale=320:320,fps=25", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def browser(camera_y4m):
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=_chromium(), args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={camera_y4m}", "--autoplay-policy=no-user-gesture-required"])
        yield chromium
        chromium.close()


def _start(browser, server, portrait: Path, transport: str):
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}?transport={transport}")
    page.set_input_files("#portrait-file", str(portrait))
    page.wait_for_function("!document.getElementById('start').disabled", timeout=30_000)
    assert page.text_content("#portrait-message").startswith("face found")
    page.click("#start")
    return page, errors


def _wait_for_frames(page, n: int = FRAMES_WANTED, timeout: float = 60.0) -> dict:
    page.wait_for_function(f"window.personalive.figures().shown >= {n}", timeout=timeout * 1000)
    return page.evaluate("window.personalive.figures()")


def _output_spread(page) -> float:
    """Standard deviation of the displayed animated frame's pixels: 0 for a blank canvas."""
    return page.evaluate("""() => {
        const c = document.getElementById('output');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = 0, s2 = 0, n = 0;
        for (let i = 0; i < d.length; i += 16) { const v = d[i] + d[i + 1] + d[i + 2]; s += v; s2 += v * v; n++; }
        return Math.sqrt(s2 / n - (s / n) ** 2) / 3;
    }""")


def _save_screenshot(page, path: Path) -> None:
    """The page in use, for the docs: 128 colours keep the PNG under 200 KB."""
    import io

    from PIL import Image

    Image.open(io.BytesIO(page.screenshot())).convert("RGB").quantize(128).save(path, optimize=True)


def _wait_freed(server, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while server.manager.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.manager.active == 0


def _check_live(page, errors, server, timeout: float = 60.0):
    figures = _wait_for_frames(page, timeout=timeout)
    assert not errors, errors
    assert _output_spread(page) > 10  # the portrait is displayed, not a blank canvas
    assert len(figures["latencies"]) >= FRAMES_WANTED // 2  # most frames' latency is measured
    assert all(0 < v < timeout * 1000 for v in figures["latencies"])
    assert page.text_content("#fig-latency").endswith(" ms")
    assert server.manager.active == 1
    return figures


@pytest.mark.parametrize("transport", ["webrtc", "websocket"])
def test_still_animates_live_and_stop_frees_the_session(browser, serve_app, demo_ref, transport):
    server = serve_app("still", size=256)
    page, errors = _start(browser, server, demo_ref, transport)
    _check_live(page, errors, server)
    if transport == "webrtc" and os.environ.get("PERSONALIVE_UPDATE_SCREENSHOT") == "1":
        _save_screenshot(page, REPO / "docs" / "serve.png")
    page.click("#stop")
    _wait_freed(server)
    page.wait_for_selector("#download:not(.disabled)", timeout=10_000)  # the session's recording
    page.close()


def test_the_tiny_model_animates_live(browser, serve_app, demo_ref, tiny_weights):
    server = serve_app("personalive", size=128, weights=tiny_weights)
    # WebSocket: no VP8 coding in Python beside the model on a 2-core machine (WebRTC is tested with still)
    page, errors = _start(browser, server, demo_ref, "websocket")
    figures = _check_live(page, errors, server, timeout=180.0)
    assert figures["server"]["emitted"] >= FRAMES_WANTED
    page.click("#stop")
    _wait_freed(server)
    page.close()


def test_closing_the_tab_frees_the_session_and_a_second_viewer_is_told_busy(browser, serve_app, demo_ref):
    server = serve_app("still", size=128, max_sessions=1)
    page, errors = _start(browser, server, demo_ref, "webrtc")
    _wait_for_frames(page, 5)
    other = browser.new_page()
    response = other.goto(server.url)
    assert response.status == 503 and "busy" in other.text_content("h1").lower()
    other.close()
    page.close(run_before_unload=True)
    _wait_freed(server, timeout=5.0)
