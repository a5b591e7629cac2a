"""Glass-to-glass latency of ``personalive serve``, per transport, measured in a real browser.

Headless Chromium (the system's) opens the page with its fake camera reading a driving video at ``--fps``
(scaled to ``--size``²), uploads the portrait and animates for ``--seconds``; the page's own figures give
each displayed frame's display time minus the capture time of the camera frame it animates (one clock,
the page's). The first second is left out (connection set-up, the encoder's first key frames).

    python benchmarks/serve_latency.py --reference ../shared/demo/ref_image.png \\
        --driving ../shared/demo/driving_video.mp4 --method still --size 512 --fps 25 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(args, transport: str, camera: Path) -> dict:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from personalive_cli.pipeline.animate import build_method
    from personalive_cli.serve.app import ServeSettings, create_app

    method = build_method(args.method, args.size, args.device, "auto", 42, args.weights)
    app = create_app(method, ServeSettings(crop=args.crop))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=[
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={camera}", "--autoplay-policy=no-user-gesture-required"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/?transport={transport}")
            page.set_input_files("#portrait-file", str(args.reference))
            page.wait_for_function("!document.getElementById('start').disabled", timeout=60_000)
            page.click("#start")
            page.wait_for_function("window.personalive.figures().shown > 0", timeout=120_000)
            started = time.monotonic()
            time.sleep(args.seconds)
            figures = page.evaluate("window.personalive.figures()")
            elapsed = time.monotonic() - started
            page.click("#stop")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    latencies = figures["latencies"][int(args.fps):]  # the first second: set-up
    q = statistics.quantiles(latencies, n=20)
    server_stats = figures["server"]
    return {"transport": transport, "frames_shown": figures["shown"], "measured": len(latencies),
            "output_fps": round(figures["shown"] / elapsed, 1),
            "median_ms": round(statistics.median(latencies), 1), "p95_ms": round(q[18], 1),
            "dropped": server_stats.get("dropped", 0) + server_stats.get("send_dropped", 0) + figures["pageDropped"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--driving", type=Path, required=True)
    parser.add_argument("--method", default="still")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--crop", default="none", help="the fake camera is already a face crop")
    parser.add_argument("--transports", default="webrtc,websocket")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args()
    if not args.chromium:
        sys.exit("error: no Chromium found (apt-get install chromium, or pass --chromium PATH)")
    from personalive_cli.io.ffmpeg import find_ffmpeg

    with tempfile.TemporaryDirectory() as tmp:
        camera = Path(tmp) / "camera.y4m"
        seconds = min(args.seconds + 5, 30)  # Chromium loops the file
        subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(args.driving),
                        "-t", str(seconds), "-vf", f"scale={args.size}:{args.size},fps={args.fps}",
                        "-pix_fmt", "yuv420p", str(camera)], check=True)
        rows = [measure(args, t, camera) for t in args.transports.split(",")]
    for row in rows:
        print(json.dumps({"method": args.method, "size": args.size, "fps": args.fps, **row}))


if __name__ == "__main__":
    main()
