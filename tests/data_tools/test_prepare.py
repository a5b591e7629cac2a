"""``personalive data prepare folder``: crops, fixed fps, manifest, resumable."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import probe, write_video
from typer.testing import CliRunner

from data_tools.manifest import read_manifest
from data_tools.prepare import PrepareOptions, prepare_folder
from personalive_cli.cli.app import app
from personalive_cli.errors import UserError


def _src(tmp_path, n=2):
    src = tmp_path / "raw"
    src.mkdir()
    for k in range(n):
        frames = [np.full((48, 80, 3), 40 * k + i, np.uint8) for i in range(10)]
        write_video(src / f"v{k}.mp4", frames, fps=20)
    return src


def test_prepare_resample_resume_and_cross(tmp_path):
    src, dst = _src(tmp_path), tmp_path / "prep"
    opts = PrepareOptions(size=64, fps=10, crop="none", cross=True, boxes=False)
    r = prepare_folder(src, dst, opts)
    assert sorted(r.done) == ["v0", "v1"] and not r.skipped
    info = probe(dst / "videos" / "v0.mp4")
    assert (info["width"], info["height"], info["fps"], info["frames"]) == (64, 64, 10, 5)  # 0.5 s at 10 fps
    entries = read_manifest(dst / "manifest.csv")
    assert [(e.id, e.protocol) for e in entries] == [("v0", "self"), ("v1", "self"), ("v0__x__v1", "cross"),
                                                     ("v1__x__v0", "cross")]
    assert (dst / entries[2].reference).is_file()
    mtime = (dst / "videos" / "v0.mp4").stat().st_mtime_ns
    (dst / "videos" / "v1.mp4").unlink()  # as if interrupted before v1 finished
    r = prepare_folder(src, dst, opts)
    assert r.skipped == ["v0"] and r.done == ["v1"]
    assert (dst / "videos" / "v0.mp4").stat().st_mtime_ns == mtime
    with pytest.raises(UserError, match="other settings"):
        prepare_folder(src, dst, PrepareOptions(size=128, fps=10, crop="none", boxes=False))


def test_cli_prepares_demo_clip_with_face_crops(tmp_path, demo_drive):
    src = tmp_path / "raw"
    src.mkdir()
    (src / "demo.mp4").symlink_to(demo_drive)
    dst = tmp_path / "prep"
    args = ["data", "prepare", "folder", str(src), str(dst), "--size", "128", "--fps", "25", "--max-frames", "12"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "prepared 1 video(s)" in r.stderr and r.stdout == ""
    info = probe(dst / "videos" / "demo.mp4")
    assert (info["width"], info["height"], info["frames"]) == (128, 128, 12)
    r = CliRunner().invoke(app, args)
    assert "1 already done" in r.stderr


def test_cli_errors(tmp_path):
    r = CliRunner().invoke(app, ["data", "prepare", "folder", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert r.exit_code == 1 and "source folder not found" in r.stderr


def test_clashing_ids_dst_inside_src_and_atomic_settings(tmp_path):
    """a.mov and a.mp4 both become videos (a, a_mp4); DST inside SRC resumes; prepare.json is whole."""
    src = tmp_path / "raw"
    src.mkdir()
    frames = [np.full((48, 48, 3), 10 * i, np.uint8) for i in range(4)]
    write_video(src / "a.mp4", frames, fps=10)
    write_video(src / "a.mov", frames, fps=10)
    dst = src / "prepared"
    opts = PrepareOptions(size=64, fps=10, crop="none", boxes=False)
    r = prepare_folder(src, dst, opts)
    assert sorted(r.done) == ["a", "a_mp4"] and not r.failed
    assert sorted(e.id for e in read_manifest(dst / "manifest.csv")) == ["a", "a_mp4"]
    r = prepare_folder(src, dst, opts)  # resume: its own outputs under SRC are not new sources
    assert sorted(r.skipped) == ["a", "a_mp4"] and not r.done
    assert not list(dst.glob(".*.part"))


def test_cli_prepares_several_clips_of_different_rates_in_one_run(tmp_path, ffmpeg):
    """Three clips (25, 30 and 24000/1001 fps; different lengths and sizes; one with audio) all reach the
    manifest in one run, each with the frame count its duration gives at 25 fps."""
    import math
    import subprocess
    from fractions import Fraction

    import av

    src = tmp_path / "raw"
    src.mkdir()
    clips = {"a25": (Fraction(25), 30, (48, 64)), "b30": (Fraction(30), 36, (80, 80)),
             "c2397": (Fraction(24000, 1001), 48, (72, 96))}
    for name, (rate, n, (h, w)) in clips.items():
        path = src / f"{name}.mp4"
        with av.open(str(path), mode="w") as c:
            s = c.add_stream("libx264", rate=rate)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            for i in range(n):
                c.mux(s.encode(av.VideoFrame.from_ndarray(np.full((h, w, 3), 5 * i, np.uint8), format="rgb24")))
            c.mux(s.encode(None))
    with_audio = src / "b30.mp4"
    subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-i", str(with_audio), "-f", "lavfi", "-i",
                    "sine=frequency=440", "-t", "1.2", "-c:v", "copy", "-c:a", "aac", str(src / "b30a.mp4")],
                   check=True)
    with_audio.unlink()
    (src / "b30a.mp4").rename(with_audio)
    dst = tmp_path / "dst"
    r = CliRunner().invoke(app, ["data", "prepare", "folder", str(src), str(dst), "--crop", "none", "--size", "64",
                                 "--no-boxes"])
    assert r.exit_code == 0, r.output
    assert "prepared 3 video(s), 0 already done, 0 failed" in r.stderr
    entries = {e.id: e for e in read_manifest(dst / "manifest.csv")}
    assert sorted(entries) == sorted(clips)
    for name, (rate, n, _) in clips.items():
        expected = math.ceil(Fraction(n) / rate * 25)  # output frames k with k/25 before the clip's end
        assert entries[name].frames == expected == probe(dst / "videos" / f"{name}.mp4")["frames"], name
    audio = probe(dst / "videos" / "b30.mp4")["audio_seconds"]
    assert abs(audio - entries["b30"].frames / 25) < 0.05
