"""`personalive animate`, run as a user types it (in-process: no pipe or signal involved)."""


from helpers import invoke, make_driving_with_audio, probe


def run_cli(*args):
    return invoke(*args)


def test_animate_still_with_the_defaults(tmp_path, demo_ref, demo_drive):
    # 25 frames: a second of the default 512 px, auto crop and 25 fps (`demo` renders the default 100)
    out = tmp_path / "out.mp4"
    r = run_cli("animate", demo_ref, demo_drive, "--method", "still", "--frames", 25, "-o", out)
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (25, 512, 512, 25)
    assert info["audio_seconds"] is None
    assert "wrote" in r.stderr and r.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_animate_keeps_fps_frames_and_audio(tmp_path, demo_ref, demo_drive, ffmpeg):
    drive = make_driving_with_audio(ffmpeg, demo_drive, tmp_path / "d30.mp4", "30", 4, size=128)
    src = probe(drive)
    out = tmp_path / "out.mp4"
    r = run_cli("animate", demo_ref, drive, "--method", "still", "--size", 256, "--crop", "none", "-o", out)
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert info["fps"] == src["fps"] == 30
    assert info["frames"] == src["frames"] == 120
    assert abs(info["audio_seconds"] - info["frames"] / info["fps"]) < 0.03


def test_animate_ntsc_resampled_to_25(tmp_path, demo_ref, demo_drive, ffmpeg):
    drive = make_driving_with_audio(ffmpeg, demo_drive, tmp_path / "d2997.mp4", "30000/1001", 6, size=128)
    out = tmp_path / "out.mp4"
    r = run_cli("animate", demo_ref, drive, "--method", "still", "--size", 128, "--crop", "none", "--fps", 25, "-o", out)
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert info["fps"] == 25
    src = probe(drive)
    assert abs(info["frames"] / 25 - src["frames"] / src["fps"]) <= 1 / 25
    assert abs(info["audio_seconds"] - info["frames"] / 25) < 0.03


def _invoke(*args):
    from typer.testing import CliRunner

    from personalive_cli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_variable_frame_rate_keeps_duration_and_audio_sync(tmp_path, ffmpeg):
    from helpers import write_vfr_video

    from personalive_cli.demo import demo_files

    drive = write_vfr_video(tmp_path / "vfr.mp4", n=66, seconds=4.0, ffmpeg=ffmpeg)
    out = tmp_path / "out.mp4"
    r = _invoke("animate", demo_files()[0], drive, "--method", "still", "--size", 128, "--crop", "none", "-o", out)
    assert r.exit_code == 0, r.output
    info = probe(out)
    duration = info["frames"] / info["fps"]
    assert abs(duration - 4.0) <= 1 / info["fps"], (info, duration)
    assert abs(info["audio_seconds"] - duration) < 0.05


def test_video_reference_uses_the_named_frame(tmp_path):
    from personalive_cli.demo import demo_files

    _, drive = demo_files()
    out = tmp_path / "o.webm"
    r = _invoke("animate", drive, drive, "--method", "still", "--frames", 4, "--size", 128, "--crop", "none",
                "--reference-frame", 50, "-o", out)
    assert r.exit_code == 0, r.output
    assert "warning: the reference driving.mp4 is a video: using its frame 50" in r.stderr
    assert probe(out)["frames"] == 4


def test_reference_warnings_two_faces_and_tiny(tmp_path):
    import numpy as np
    from PIL import Image

    from personalive_cli.demo import demo_files

    portrait, drive = demo_files()
    face = Image.open(portrait).convert("RGB")
    two = Image.new("RGB", (900, 512), (128, 128, 128))
    two.paste(face, (0, 0))
    two.paste(face.resize((300, 300)), (580, 100))
    two.save(tmp_path / "two.png")
    r = _invoke("animate", tmp_path / "two.png", drive, "--method", "still", "--frames", 2, "--size", 128,
                "-o", tmp_path / "a.mp4")
    assert r.exit_code == 0, r.output
    assert "warning: the reference shows 2 faces; animating the largest" in r.stderr

    Image.fromarray(np.asarray(face.resize((8, 8)))).save(tmp_path / "tiny.png")
    r = _invoke("animate", tmp_path / "tiny.png", drive, "--method", "still", "--frames", 2, "--size", 128,
                "-o", tmp_path / "b.mp4")
    assert r.exit_code == 0, r.output
    assert "warning: the reference is 8×8 px: a face under 64 px will look poor" in r.stderr
