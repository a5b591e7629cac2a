"""Per-frame face boxes of prepared clips: ``boxes/<id>.npz`` and ``train_manifest.csv``."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import invoke, write_video

from data_tools.boxes import BoxTrack
from personalive_cli.training.clips import ClipBoxes, read_train_manifest

pytest.importorskip("mediapipe")


def _contains(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    return (outer[:, 0] <= inner[:, 0]) & (outer[:, 1] <= inner[:, 1]) & (outer[:, 2] >= inner[:, 2]) & (
        outer[:, 3] >= inner[:, 3])


def test_demo_face_box_holds_eyes_and_mouth_on_every_frame_and_resumes(tmp_path, demo_drive):
    src = tmp_path / "raw"
    src.mkdir()
    (src / "demo.mp4").symlink_to(demo_drive)
    dst = tmp_path / "data"
    args = ["data", "prepare", "folder", src, dst, "--size", "256", "--max-frames", "24"]
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    root, clips = read_train_manifest(dst)
    assert [(c.id, c.frames, c.size, c.fps, c.split) for c in clips] == [("demo", 24, 256, 25.0, "train")]
    boxes = ClipBoxes.load(clips[0].boxes_path(root))
    assert len(boxes) == 24 and boxes.detected.all()
    for part in (boxes.left_eye, boxes.right_eye, boxes.mouth):
        assert _contains(boxes.face, part).all()
        assert ((part[:, 2] - part[:, 0]) > 2).all() and ((part[:, 3] - part[:, 1]) > 2).all()
    assert (boxes.face >= 0).all() and (boxes.face <= 256).all()
    # named from the image's side: the left eye box lies left of the right one, both above the mouth
    assert (boxes.left_eye[:, 2] < boxes.right_eye[:, 0]).all()
    assert (boxes.left_eye[:, 3] < boxes.mouth[:, 1]).all()

    # a video without boxes (as after an interruption) gets them from its decoded frames: the same boxes
    (dst / "boxes" / "demo.npz").unlink()
    r = invoke(*args)
    assert r.returncode == 0 and "boxes added to 1 video(s) already there" in r.stderr, r.stderr
    again = ClipBoxes.load(dst / "boxes" / "demo.npz")
    assert np.abs(again.face - boxes.face).max() < 3 and np.abs(again.mouth - boxes.mouth).max() < 3
    manifest = (dst / "train_manifest.csv").read_text()
    mtime = (dst / "videos" / "demo.mp4").stat().st_mtime_ns
    r = invoke(*args)
    assert r.returncode == 0 and "0 video(s), 1 already done" in r.stderr
    assert (dst / "train_manifest.csv").read_text() == manifest
    assert (dst / "videos" / "demo.mp4").stat().st_mtime_ns == mtime


def test_first_frame_without_face_drops_the_clip(tmp_path, face_videos):
    src = face_videos(1)
    write_video(src / "flat.mp4", [np.full((128, 128, 3), 90, np.uint8)] * 6)
    dst = tmp_path / "data"
    r = invoke("data", "prepare", "folder", src, dst, "--crop", "none", "--size", "128")
    assert r.returncode == 0, r.stderr
    assert "prepared 1 video(s)" in r.stderr and "1 dropped (no face on the first frame)" in r.stderr
    assert sorted(p.name for p in (dst / "videos").iterdir()) == ["clip0.mp4"]
    assert [c.id for c in read_train_manifest(dst)[1]] == ["clip0"]
    assert "flat" not in (dst / "manifest.csv").read_text()

    # only faceless clips: an error line, and no DST left behind
    only = tmp_path / "only"
    only.mkdir()
    (src / "flat.mp4").rename(only / "flat.mp4")
    r = invoke("data", "prepare", "folder", only, tmp_path / "none", "--crop", "none", "--size", "128")
    assert r.returncode == 1
    assert "no video could be prepared: 1 without a face on the first frame (flat)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()


def test_face_lost_mid_clip_copies_the_previous_boxes(tmp_path, demo_frames):
    frames = [f.copy() for f in demo_frames[:12]]
    for i in (5, 6, 7):
        frames[i][:] = 0
    src = tmp_path / "raw"
    src.mkdir()
    write_video(src / "blink.mp4", frames)
    dst = tmp_path / "data"
    r = invoke("data", "prepare", "folder", src, dst, "--crop", "none", "--size", "128")
    assert r.returncode == 0, r.stderr
    boxes = ClipBoxes.load(dst / "boxes" / "blink.npz")
    assert boxes.detected.tolist() == [True] * 5 + [False] * 3 + [True] * 4
    for name in ("face", "left_eye", "right_eye", "mouth"):
        b = getattr(boxes, name)
        assert (b[5:8] == b[4]).all()
        assert not (b[8] == b[4]).all()  # detected again: its own boxes


def test_box_track():
    track = BoxTrack()
    assert not track.add(None)  # nothing to copy on the first frame
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert track.add(a) and track.add(None) and track.add(a + 1)
    boxes = track.result()
    assert boxes.detected.tolist() == [True, False, True]
    assert (boxes.face[1] == a[0]).all() and (boxes.mouth[2] == a[3] + 1).all()


def test_missing_mediapipe_names_the_train_extra(tmp_path, face_videos, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mediapipe" else real(name, *a))
    r = invoke("data", "prepare", "folder", face_videos(1), tmp_path / "data", "--crop", "none")
    assert r.returncode == 1
    assert "pip install 'personalive[train]'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()
