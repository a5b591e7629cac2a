"""`personalive animate`, run as a user runs it (a subprocess of the installed command)."""

import subprocess
import sys

from helpers import make_driving_with_audio, probe


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "personalive_cli.cli.app", *map(str, args)],
                          capture_output=True, text=True, **kw)


def test_animate_still_100_frames(tmp_path, demo_ref, demo_drive):
    out = tmp_path / "out.mp4"
    r = run_cli("animate", demo_ref, demo_drive, "--method", "still", "--frames", 100, "-o", out)
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (100, 512, 512, 25)
    assert info["audio_seconds"] is None
    assert "wrote" in r.stderr and r.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_animate_keeps_fps_frames_and_audio(tmp_path, demo_ref, demo_drive, ffmpeg):
    drive = make_driving_with_audio(ffmpeg, demo_drive, tmp_path / "d30.mp4", "30", 4)
    src = probe(drive)
    out = tmp_path / "out.mp4"
    r = run_cli("animate", demo_ref, drive, "--method", "still", "--size", 256, "--crop", "none", "-o", out)
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert info["fps"] == src["fps"] == 30
    assert info["frames"] == src["frames"] == 120
    assert abs(info["audio_seconds"] - info["frames"] / info["fps"]) < 0.03


def test_animate_ntsc_resampled_to_25(tmp_path, demo_ref, demo_drive, ffmpeg):
    drive = make_driving_with_audio(ffmpeg, demo_drive, tmp_path / "d2997.mp4", "30000/1001", 6)
    out = tmp_path / "out.mp4"
    r = run_cli("animate", demo_ref, drive, "--method", "still", "--size", 128, "--crop", "none", "--fps", 25, "-o", out)
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert info["fps"] == 25
    src = probe(drive)
    assert abs(info["frames"] / 25 - src["frames"] / src["fps"]) <= 1 / 25
    assert abs(info["audio_seconds"] - info["frames"] / 25) < 0.03
