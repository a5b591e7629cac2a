"""Every bad input: one clear line on stderr, a non-zero exit, no traceback, no partial output."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import write_video

CLI = [sys.executable, "-m", "personalive_cli.cli.app"]


def run(*args, env=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def assert_clean_failure(r, *needles):
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def animate(tmp_path, ref, drive, *extra):
    out = tmp_path / "out" / "o.mp4" if "--missing-dir" in extra else tmp_path / "o.mp4"
    extra = [e for e in extra if e != "--missing-dir"]
    r = run("animate", ref, drive, "-o", out, *extra)
    leftovers = [p.name for p in tmp_path.iterdir() if p.suffix == ".mp4" and p.name.startswith((".o", "o"))]
    return r, leftovers


def test_missing_reference(tmp_path, demo_drive):
    r, left = animate(tmp_path, tmp_path / "nope.png", demo_drive, "--method", "still")
    assert_clean_failure(r, "reference image not found")
    assert left == []


def test_unreadable_reference(tmp_path, demo_drive):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    r, left = animate(tmp_path, bad, demo_drive, "--method", "still")
    assert_clean_failure(r, "cannot read reference image")
    assert left == []


def test_text_file_named_mp4(tmp_path, demo_ref):
    bad = tmp_path / "video.mp4"
    bad.write_text("hello\n" * 100)
    r = run("animate", demo_ref, bad, "--method", "still", "-o", tmp_path / "o.mp4")
    assert_clean_failure(r, "cannot read video")
    assert not (tmp_path / "o.mp4").exists()


def test_video_without_video_stream(tmp_path, demo_ref, ffmpeg):
    audio = tmp_path / "audio.mp4"
    subprocess.run([ffmpeg, "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440", "-t", "1", str(audio)],
                   check=True)
    r = run("animate", demo_ref, audio, "--method", "still", "-o", tmp_path / "o.mp4")
    assert_clean_failure(r, "no video stream")


def test_video_with_zero_frames(tmp_path, demo_ref):
    empty = tmp_path / "empty.y4m"  # a valid header, a video stream, and no frame at all
    empty.write_bytes(b"YUV4MPEG2 W64 H64 F25:1 Ip A1:1 C420jpeg\n")
    r = run("animate", demo_ref, empty, "--method", "still", "-o", tmp_path / "o.mp4")
    assert_clean_failure(r, "no decodable video frames")


def test_unknown_method_lists_known(tmp_path, demo_ref, demo_drive):
    r = run("animate", demo_ref, demo_drive, "--method", "nosuch", "-o", tmp_path / "o.mp4")
    assert_clean_failure(r, "unknown method 'nosuch'", "still")


def test_output_in_missing_folder(tmp_path, demo_ref, demo_drive):
    r = run("animate", demo_ref, demo_drive, "--method", "still", "-o", tmp_path / "missing" / "o.mp4")
    assert_clean_failure(r, "output folder does not exist")


@pytest.mark.parametrize("size", [100, 4096, 0])
def test_unsupported_size(tmp_path, demo_ref, demo_drive, size):
    r = run("animate", demo_ref, demo_drive, "--method", "still", "--size", size, "-o", tmp_path / "o.mp4")
    assert_clean_failure(r, f"unsupported --size {size}")


def test_no_face_with_crop_auto(tmp_path, demo_ref):
    noise = [np.random.default_rng(i).integers(0, 40, (96, 128, 3), dtype=np.uint8) for i in range(40)]
    drive = write_video(tmp_path / "noface.mp4", noise)
    r = run("animate", demo_ref, drive, "--method", "still", "--crop", "auto", "-o", tmp_path / "o.mp4")
    assert_clean_failure(r, "no face found")
    assert not (tmp_path / "o.mp4").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["noface.mp4"]


def test_ffmpeg_missing_for_to(tmp_path, demo_ref, demo_drive):
    r = run("stream", "--reference", demo_ref, "--source", demo_drive, "--method", "still", "--to",
            tmp_path / "o.mp4", env={"PERSONALIVE_FFMPEG": ""})
    assert_clean_failure(r, "ffmpeg not found")


def test_cuda_on_cpu_machine(tmp_path, demo_ref, demo_drive):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = run("animate", demo_ref, demo_drive, "--method", "still", "--device", "cuda", "-o", tmp_path / "o.mp4")
    assert_clean_failure(r, "CUDA is not available")


def test_non_positive_fps(tmp_path, demo_ref, demo_drive):
    r = run("animate", demo_ref, demo_drive, "--method", "still", "--fps", -5, "-o", tmp_path / "o.mp4")
    assert_clean_failure(r, "--fps must be positive")


def test_ffmpeg_dying_mid_stream_is_an_error(tmp_path, demo_ref, demo_drive):
    # nothing listens on port 1: ffmpeg fails to open the output, and the stream must say so (not exit 0)
    r = run("stream", "--reference", demo_ref, "--source", demo_drive, "--method", "still", "--size", 128,
            "--to", "rtmp://127.0.0.1:1/live/x")
    assert_clean_failure(r, "ffmpeg")
    assert "Connection refused" in r.stderr


def test_clip_based_methods_cannot_stream(demo_ref, demo_drive):
    r = run("stream", "--reference", demo_ref, "--source", demo_drive, "--method", "x-portrait")
    assert_clean_failure(r, "cannot stream", "personalive animate")


def test_raw_stdin_with_zero_size(demo_ref):
    r = subprocess.run([*CLI, "stream", "--reference", str(demo_ref), "--source", "-", "--method", "still",
                        "--crop", "none", "--input-size", "0x0"], input=b"\0" * 100, capture_output=True, text=False)
    lines = [ln for ln in r.stderr.decode().strip().splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1 and "must be positive" in lines[0]
