"""`personalive` commands with the PersonaLive method on a tiny official-layout weights folder, in-process
(Typer's runner): pipes and signals are `tests/cli/test_stream.py`'s subject, with the `still` method."""

import json
import re
import shutil
import subprocess

import numpy as np
from helpers import invoke as run
from helpers import make_driving_with_audio, probe


def one_error_line(r):
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


def test_animate_writes_every_frame_with_audio(tmp_path, demo_ref, demo_drive, ffmpeg, tiny_weights):
    drive = make_driving_with_audio(ffmpeg, demo_drive, tmp_path / "d.mp4", "30", 1)
    out = tmp_path / "pl.mp4"
    # 11 frames: not a multiple of the 4-frame step, so the end padding is exercised
    r = run("animate", demo_ref, drive, "--method", "personalive", "--weights", tiny_weights, "--size", 128,
            "--frames", 11, "--device", "cpu", "-o", out)
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert (info["frames"], info["width"], info["fps"]) == (11, 128, 30)
    assert abs(info["audio_seconds"] - 11 / 30) < 0.03


def test_stream_personalive_rgb24(tmp_path, demo_ref, demo_drive, tiny_weights):
    from helpers import write_video

    from personalive_cli.io.video import VideoReader

    clip = write_video(tmp_path / "c.mp4", list(VideoReader(demo_drive).iter_frames(0, 9)))
    r = run("stream", "--reference", demo_ref, "--source", clip, "--method", "personalive", "--weights",
            tiny_weights, "--size", "128", "--format", "rgb24")
    assert r.returncode == 0, r.stderr
    frames = np.frombuffer(r.stdout_bytes, np.uint8).reshape(-1, 128, 128, 3)
    assert len(frames) == 9 and frames.std() > 0


def test_methods_reports_weights(tiny_weights, tmp_path):
    r = run("methods", "--json", "--weights", tiny_weights)
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["personalive"]["ready"] is True and rows["personalive"]["frames_per_step"] == 4
    r = run("methods", "--json", "--weights", tmp_path / "none")
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["personalive"]["ready"] is False and "not found" in rows["personalive"]["status"]


def test_weights_check_ok_and_damaged(tmp_path, tiny_weights):
    r = run("weights", "check", tiny_weights)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "w"
    shutil.copytree(tiny_weights, root)
    (root / "personalive" / "temporal_module.pth").write_bytes(b"\0" * 100)
    r = run("weights", "check", root)
    assert r.returncode == 1 and "temporal_module.pth" in r.stderr.splitlines()[-1]


def test_missing_weights_names_the_download_command(tmp_path, demo_ref, demo_drive):
    line = one_error_line(run("animate", demo_ref, demo_drive, "--method", "personalive", "--weights",
                              tmp_path / "none", "-o", tmp_path / "o.mp4"))
    assert "weights folder not found" in line and "personalive weights download" in line
    assert not (tmp_path / "o.mp4").exists()


def test_wrong_weights_folder(tmp_path, demo_ref, demo_drive):
    (tmp_path / "w").mkdir()
    line = one_error_line(run("animate", demo_ref, demo_drive, "--method", "personalive", "--weights",
                              tmp_path / "w", "-o", tmp_path / "o.mp4"))
    assert "not a PersonaLive weights folder" in line and "denoising_unet.pth" in line


def test_cuda_only_options_on_cpu(tmp_path, demo_ref, demo_drive, tiny_weights):
    line = one_error_line(run("animate", demo_ref, demo_drive, "--method", "personalive", "--weights",
                              tiny_weights, "--device", "cpu", "--attention", "xformers", "-o", tmp_path / "o.mp4"))
    assert "xformers needs a CUDA device" in line


def test_weights_make_tiny(tmp_path):
    r = run("weights", "make-tiny", tmp_path / "t")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "t" / "personalive" / "denoising_unet.pth").is_file()


def test_realtime_stream_drops_frames_when_behind(tmp_path, demo_ref, demo_drive, ffmpeg, tiny_weights):
    # a 200 fps source paced in real time is far faster than the CPU model: frames must be dropped
    fast = tmp_path / "fast.mp4"
    subprocess.run([ffmpeg, "-loglevel", "error", "-i", str(demo_drive), "-frames:v", "120", "-vf", "setpts=N/200/TB,scale=128:128",
                    "-r", "200", str(fast)], check=True)
    r = run("stream", "--reference", demo_ref, "--source", fast, "--method", "personalive", "--weights",
            tiny_weights, "--size", "128", "--format", "rgb24", "--realtime", "--crop", "none")
    assert r.returncode == 0, r.stderr
    summary = r.stderr.strip().splitlines()[-1]
    match = re.match(r"stream: (\d+) frames in, (\d+) out, (\d+) dropped", summary)
    assert match, summary
    received, written, dropped = (int(x) for x in match.groups())
    assert received == 120 and dropped > 0 and written == received - dropped
    assert len(r.stdout_bytes) == written * 128 * 128 * 3


def test_engine_fixes_are_named_options(tmp_path, demo_ref, demo_drive, tiny_weights):
    out = tmp_path / "o.mp4"
    r = run("animate", demo_ref, demo_drive, "--method", "personalive", "--weights", tiny_weights, "--size", 128,
            "--frames", 4, "--crop", "none", "--option", "reset_keyframe_flag=false", "--option",
            "keyframe_compare=newest", "-o", out)
    assert r.returncode == 0, r.stderr
    assert probe(out)["frames"] == 4
    line = one_error_line(run("animate", demo_ref, demo_drive, "--method", "personalive", "--weights", tiny_weights,
                              "--option", "keyframe_compare=sideways", "-o", tmp_path / "p.mp4"))
    assert "keyframe_compare" in line
    line = one_error_line(run("animate", demo_ref, demo_drive, "--method", "personalive", "--weights", tiny_weights,
                              "--option", "no_such_knob=1", "-o", tmp_path / "p.mp4"))
    assert "has no option 'no_such_knob'" in line


def test_make_tiny_never_overwrites_weights(tiny_weights):
    line = one_error_line(run("weights", "make-tiny", tiny_weights))
    assert "already holds PersonaLive weights" in line


def test_weights_commands_for_any_method_with_weights(tmp_path):
    r = run("weights", "make-tiny", "--method", "liveportrait", tmp_path / "lp")
    assert r.returncode == 0, r.stderr
    r = run("weights", "check", "--method", "liveportrait", tmp_path / "lp", "--json")
    assert r.returncode == 0, r.stderr
    assert {row["status"] for row in json.loads(r.stdout)} <= {"ok", "optional"}
    r = run("weights", "check", "liveportrait", tmp_path / "lp")  # the older spelling still works
    assert r.returncode == 0, r.stderr
    line = one_error_line(run("weights", "check", "--method", "still", tmp_path / "lp"))
    assert "has no weights of its own" in line and "liveportrait" in line


def test_methods_info_lists_options_with_help():
    r = run("methods", "info", "personalive")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stderr.split())
    assert "reset_keyframe_flag" in text and "model flags: --attention, --compile, --cuda-graphs, --vae" in text
