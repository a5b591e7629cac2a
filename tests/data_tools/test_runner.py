"""Running prepare at scale: workers, shards, concurrent manifest merges, bad options and inputs, and
clips already in place (``prepare boxes``, VFHQ-style folders)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from helpers import invoke, write_video

import data_tools.dataset_folder as dataset_folder
from data_tools.dataset_folder import ClipRecord, claim, update_manifests
from personalive_cli.errors import UserError
from personalive_cli.training.clips import ClipBoxes, read_train_manifest

PREP = ("data", "prepare", "folder")


def _texts(dst):
    return (dst / "train_manifest.csv").read_text(), (dst / "manifest.csv").read_text()


def test_workers_and_shards_make_the_same_manifests(tmp_path, face_videos):
    pytest.importorskip("mediapipe")
    src = face_videos(3)
    common = ["--crop", "none", "--size", "128"]
    one, two, sharded = tmp_path / "one", tmp_path / "two", tmp_path / "sharded"
    assert invoke(*PREP, src, one, *common).returncode == 0
    r = invoke(*PREP, src, two, *common, "--workers", "2")
    assert r.returncode == 0 and "prepared 3 video(s)" in r.stderr, r.stderr
    assert _texts(two) == _texts(one)
    for k in range(3):
        a, b = (ClipBoxes.load(d / "boxes" / f"clip{k}.npz") for d in (one, two))
        assert np.array_equal(a.face, b.face) and np.array_equal(a.mouth, b.mouth)
    r = invoke(*PREP, src, sharded, *common, "--shard", "1/2")
    assert r.returncode == 0 and "prepared 1 video(s)" in r.stderr  # sorted positions 1: clip1
    assert [c.id for c in read_train_manifest(sharded)[1]] == ["clip1"]
    r = invoke(*PREP, src, sharded, *common, "--shard", "0/2")
    assert r.returncode == 0 and "prepared 2 video(s)" in r.stderr  # positions 0 and 2
    assert _texts(sharded) == _texts(one)


def test_concurrent_merges_lose_no_rows(tmp_path, monkeypatch):
    """Eight runs merging their clips at once (a slow reader widens the race): every row survives."""
    dst = tmp_path / "data"
    (dst / "videos").mkdir(parents=True)
    (dst / "boxes").mkdir()
    slow_read = dataset_folder.read_records

    def read_slowly(d):
        records = slow_read(d)
        time.sleep(0.02)
        return records

    monkeypatch.setattr(dataset_folder, "read_records", read_slowly)

    def shard(k):
        for j in range(3):
            cid = f"c{k}_{j}"
            (dst / "videos" / f"{cid}.mp4").touch()
            (dst / "boxes" / f"{cid}.npz").touch()
            update_manifests(dst, {cid: ClipRecord(cid, f"videos/{cid}.mp4", f"boxes/{cid}.npz", 5, 128, 25.0,
                                                "train", "")})

    threads = [threading.Thread(target=shard, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_train_manifest(dst)[1]) == 24
    assert (dst / "manifest.csv").read_text().count(",self,") == 24


@pytest.mark.parametrize("option,value,message", [
    ("--shard", "2/2", "0 <= I < N"), ("--shard", "x", "--shard must be I/N"), ("--shard", "1/0", "0 <= I < N"),
    ("--workers", "0", "--workers must be at least 1"),
])
def test_bad_run_options(tmp_path, option, value, message):
    src = tmp_path / "raw"
    src.mkdir()
    write_video(src / "a.mp4", [np.zeros((32, 32, 3), np.uint8)] * 3)
    r = invoke(*PREP, src, tmp_path / "out", option, value)
    assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_bad_inputs(tmp_path):
    r = invoke(*PREP, tmp_path / "nope", tmp_path / "out")
    assert r.returncode == 1 and "source folder not found" in r.stderr
    (tmp_path / "empty").mkdir()
    r = invoke(*PREP, tmp_path / "empty", tmp_path / "out")
    assert r.returncode == 1 and "no videos found" in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.mp4").write_text("not a video")
    r = invoke(*PREP, bad, tmp_path / "out", "--crop", "none")
    assert r.returncode == 1 and "no video could be prepared: broken: cannot read video" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    r = invoke("data", "prepare", "boxes", tmp_path / "empty")
    assert r.returncode == 1 and "no clips in" in r.stderr
    r = invoke("data", "prepare", "boxes", tmp_path / "nope")
    assert r.returncode == 1 and "dataset folder not found" in r.stderr


def test_split_refusals(tmp_path):
    """Val clips never join a folder of training clips, nor training clips one of val clips, unless asked."""
    dst = tmp_path / "data"
    dst.mkdir()
    claim(dst, {"size": 512}, "val")
    with pytest.raises(UserError, match="holds val clips .* --allow-val-in-train"):
        claim(dst, {"size": 512}, "train")
    claim(dst, {"size": 512}, "train", allow_val_in_train=True)
    assert json.loads((dst / "prepare.json").read_text()) == {"size": 512, "splits": ["train", "val"]}
    other = tmp_path / "train"
    other.mkdir()
    claim(other, None, "train")
    with pytest.raises(UserError, match="holds training clips and these are val clips"):
        claim(other, None, "val")
    with pytest.raises(UserError, match="other settings"):
        claim(dst, {"size": 256}, "train")


def test_vfhq_style_folder_boxes_in_place_and_crop_none(tmp_path, face_videos):
    """A folder of square clips in videos/: `prepare boxes` adds boxes and manifests without re-encoding;
    `prepare folder --crop none` takes it as a source with the clips' own ids."""
    pytest.importorskip("mediapipe")
    data = tmp_path / "vfhq"
    src = face_videos(2, folder="vfhq/videos")
    write_video(src / "wide.mp4", [np.zeros((64, 96, 3), np.uint8)] * 3)
    mtime = (src / "clip0.mp4").stat().st_mtime_ns
    r = invoke("data", "prepare", "boxes", data)
    assert r.returncode == 0 and "computed the boxes of 2 clip(s)" in r.stderr and "1 failed" in r.stderr, r.stderr
    assert "wide" in r.stderr and "not square" in r.stderr
    root, clips = read_train_manifest(data)
    assert [(c.id, c.video, c.frames, c.size, c.fps) for c in clips] == [
        ("clip0", "videos/clip0.mp4", 10, 128, 25.0), ("clip1", "videos/clip1.mp4", 10, 128, 25.0)]
    assert (src / "clip0.mp4").stat().st_mtime_ns == mtime
    (src / "wide.mp4").unlink()
    r = invoke("data", "prepare", "boxes", data)
    assert r.returncode == 0 and "2 already done" in r.stderr

    out = tmp_path / "out"
    r = invoke(*PREP, data, out, "--crop", "none", "--size", "128")
    assert r.returncode == 0, r.stderr
    assert [c.id for c in read_train_manifest(out)[1]] == ["clip0", "clip1"]
