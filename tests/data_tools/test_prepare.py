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
    opts = PrepareOptions(size=64, fps=10, crop="none", cross=True)
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
        prepare_folder(src, dst, PrepareOptions(size=128, fps=10, crop="none"))


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
    opts = PrepareOptions(size=64, fps=10, crop="none")
    r = prepare_folder(src, dst, opts)
    assert sorted(r.done) == ["a", "a_mp4"] and not r.failed
    assert sorted(e.id for e in read_manifest(dst / "manifest.csv")) == ["a", "a_mp4"]
    r = prepare_folder(src, dst, opts)  # resume: its own outputs under SRC are not new sources
    assert sorted(r.skipped) == ["a", "a_mp4"] and not r.done
    assert not list(dst.glob(".*.part"))
