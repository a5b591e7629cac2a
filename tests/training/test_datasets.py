"""The training datasets: sample contents, the pair margin, determinism in (seed, k), DataLoader workers,
skipping corrupt clips, and the one-line errors of a bad DATA folder."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from personalive_cli.errors import UserError
from personalive_cli.training.clips import write_train_manifest
from personalive_cli.training.datasets import (
    CLIP_MEAN,
    CLIP_STD,
    GlobalSampler,
    ImagePairDataset,
    VideoDataset,
    box_mask,
    clip_input,
    make_loader,
)

SMALL = dict(size=64, pose_size=64, face_size=64, clip_size=32)


def pair_dataset(data, **kw):
    return ImagePairDataset(data, **{**SMALL, **kw})


def assert_range(t: torch.Tensor, lo: float, hi: float):
    assert t.dtype == torch.float32
    assert lo <= t.min().item() and t.max().item() <= hi, (t.min().item(), t.max().item())


def assert_binary_mask(m: torch.Tensor):
    assert m.dtype == torch.float32 and set(m.unique().tolist()) == {0.0, 1.0}


def assert_samples_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_image_pair_sample(data_dir):
    ds = pair_dataset(data_dir)
    assert len(ds) == 2
    s = ds[0]
    assert s["reference"].shape == s["target"].shape == (3, 64, 64)
    assert s["target_pose"].shape == (3, 64, 64) and s["target_face"].shape == (3, 64, 64)
    assert s["clip_image"].shape == (3, 32, 32)
    assert s["face_mask"].shape == s["local_mask"].shape == (1, 64, 64)
    for key in ("reference", "target", "target_face"):
        assert_range(s[key], -1, 1)
    assert_range(s["target_pose"], 0, 1)
    assert_binary_mask(s["face_mask"])
    assert_binary_mask(s["local_mask"])
    # eyes and mouth lie inside the face box
    assert torch.all(s["face_mask"][s["local_mask"] > 0] == 1)
    assert s["local_mask"].sum() < s["face_mask"].sum()
    assert s["clip_id"] in ("long", "short") and s["skipped"] == ""
    # the pose input is the target frame itself, only resized and in [0, 1] instead of [-1, 1]
    assert torch.allclose(s["target_pose"] * 2 - 1, s["target"], atol=1e-5)


def test_image_pair_defaults(data_dir):
    s = ImagePairDataset(data_dir)[1]
    assert s["reference"].shape == s["target"].shape == (3, 512, 512)
    assert s["target_pose"].shape == (3, 256, 256)
    assert s["target_face"].shape == (3, 224, 224) and s["clip_image"].shape == (3, 224, 224)
    assert s["face_mask"].shape == s["local_mask"].shape == (1, 512, 512)


def test_pair_margin(data_dir):
    ds = pair_dataset(data_dir, augment=False)
    rng = np.random.default_rng(0)
    long_pairs = [ds.pair(80, rng) for _ in range(3000)]
    assert min(abs(r - t) for r, t in long_pairs) == 30  # at least 30 apart, and 30 is reachable
    assert {t for _, t in long_pairs} == set(range(80))  # every frame can be a target
    short_pairs = [ds.pair(64, rng) for _ in range(3000)]  # 64 frames: not more than 64, no margin
    assert min(abs(r - t) for r, t in short_pairs) < 30
    assert sum(r == t for r, t in short_pairs) > 0
    # through real samples too
    for k in range(0, 24, 2):
        s = ds[k]
        if s["clip_id"] == "long":
            assert abs(s["reference_index"] - s["target_index"]) >= 30


def test_determinism_and_epochs(data_dir):
    a, b = pair_dataset(data_dir), pair_dataset(data_dir)
    assert_samples_equal(a[5], b[5])  # a fresh dataset gives the same sample for the same k
    assert_samples_equal(a[5], a[5])
    s0, s1 = a[0], a[2]  # same position in two epochs: other frames and augmentation
    assert any(not torch.equal(s0[k], s1[k]) for k in ("target_face", "reference"))
    # each epoch visits every clip once, in a seeded order
    for epoch in range(3):
        assert sorted(a[epoch * 2 + i]["clip_id"] for i in range(2)) == ["long", "short"]
    other_seed = pair_dataset(data_dir, seed=1)
    assert any(not torch.equal(a[k]["target_face"], other_seed[k]["target_face"]) for k in range(2))
    # the augmentation is seeded by (seed, k), not by global state
    torch.manual_seed(123)
    np.random.seed(123)
    assert_samples_equal(a[5], b[5])


def test_face_augmentation_changes_the_crop(data_dir):
    plain, augmented = pair_dataset(data_dir, augment=False), pair_dataset(data_dir, augment=True)
    p, q = plain[3], augmented[3]
    assert p["target_index"] == q["target_index"] and torch.equal(p["target"], q["target"])
    assert (p["target_face"] - q["target_face"]).abs().mean() > 0.02


def test_video_sample(data_dir):
    ds = VideoDataset(data_dir, frames=8, stride=4, **SMALL)
    seen = set()
    for k in range(2):
        s = ds[k]
        seen.add(s["clip_id"])
        assert s["reference"].shape == (3, 64, 64) and s["clip_image"].shape == (3, 32, 32)
        assert s["frames"].shape == (8, 3, 64, 64) and s["poses"].shape == (8, 3, 64, 64)
        assert s["faces"].shape == (8, 3, 64, 64)
        assert s["face_masks"].shape == s["local_masks"].shape == (8, 1, 64, 64)
        assert s["indices"].dtype == torch.long and s["indices"].shape == (8,)
        assert torch.all(s["indices"].diff() == 4)  # 29-frame span fits in both clips
        assert_range(s["frames"], -1, 1)
        assert_range(s["faces"], -1, 1)
        assert_range(s["poses"], 0, 1)
        assert_binary_mask(s["face_masks"])
        # colour, affine and noise jitter differ frame to frame
        assert not torch.equal(s["faces"][0], s["faces"][1])
    assert seen == {"long", "short"}
    assert_samples_equal(ds[7], VideoDataset(data_dir, frames=8, stride=4, **SMALL)[7])


def test_video_window_official_defaults(data_dir):
    ds = VideoDataset(data_dir, augment=False, **SMALL)
    assert ds.span == 157 and ds.frames == 40
    rng = np.random.default_rng(0)
    idx = ds.window(300, rng)
    assert len(idx) == 40 and np.all(np.diff(idx) == 4)
    short = ds.window(80, rng)  # shorter than the span: the whole clip, linspace with repeats
    assert short[0] == 0 and short[-1] == 79 and len(short) == 40
    s = ds[0]
    assert s["frames"].shape == (40, 3, 64, 64)
    assert s["indices"][0] == 0 and s["indices"][-1] == {"long": 79, "short": 39}[s["clip_id"]]


def test_loader_workers_match_in_process(data_dir):
    ds = pair_dataset(data_dir)
    serial = list(make_loader(ds, batch_size=2, start=2, workers=0, steps=2, pin_memory=False))
    parallel = list(make_loader(ds, batch_size=2, start=2, workers=2, steps=2, pin_memory=False))
    assert len(serial) == len(parallel) == 2
    for a, b in zip(serial, parallel, strict=True):
        assert_samples_equal(a, b)
    assert serial[0]["target"].shape == (2, 3, 64, 64) and serial[0]["skipped"] == ["", ""]
    # batch 0 holds samples 2 and 3
    assert torch.equal(serial[0]["target"][1], ds[3]["target"])


def test_global_sampler():
    world = [list(GlobalSampler(3, start=6, rank=r, world=2, steps=2)) for r in range(2)]
    assert world[0] == [[6, 7, 8], [12, 13, 14]] and world[1] == [[9, 10, 11], [15, 16, 17]]
    resumed = list(GlobalSampler(3, start=6 + 6, rank=0, world=2, steps=1))
    assert resumed == world[0][1:]
    assert len(GlobalSampler(2, steps=5)) == 5
    endless = iter(GlobalSampler(2))
    assert [next(endless) for _ in range(3)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(UserError):
        GlobalSampler(2, rank=2, world=2)


def test_corrupt_clips_are_skipped_and_reported(tmp_path, demo_frames, caplog, add_clip, plausible_boxes):
    clips = [add_clip(tmp_path, "good", demo_frames, 40), add_clip(tmp_path, "broken", None, 40),
             add_clip(tmp_path, "noface", demo_frames, 40, boxes=plausible_boxes(40, detected_first=False))]
    write_train_manifest(tmp_path / "train_manifest.csv", clips)
    ds = pair_dataset(tmp_path, augment=False)
    with caplog.at_level(logging.WARNING, logger="personalive_cli.training.datasets"):
        samples = [ds[k] for k in range(6)]
    assert all(s["clip_id"] == "good" for s in samples)
    skipped = [c for s in samples for c in s["skipped"].split(";") if c]
    # per epoch the three positions of the (cyclic) order skip 0, 1 and 2 clips before reaching "good"
    assert set(skipped) == {"broken", "noface"} and len(skipped) == 6
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # once per clip
    assert any("broken" in w for w in warnings) and any("no face" in w for w in warnings)
    # a video whose frame count disagrees with the manifest, or boxes that are not numbers, the same way
    cut = add_clip(tmp_path, "cut", demo_frames[:30], 40)
    nan_boxes = plausible_boxes(40)
    nan_boxes.mouth[:] = np.nan
    nan = add_clip(tmp_path, "nan", demo_frames, 40, boxes=nan_boxes)
    for bad in (cut, nan):
        write_train_manifest(tmp_path / "train_manifest.csv", [clips[0], bad])
        ds = pair_dataset(tmp_path, augment=False)
        assert {ds[k]["skipped"] for k in range(2)} == {"", bad.id}


def test_only_corrupt_clips_is_an_error(tmp_path, add_clip):
    write_train_manifest(tmp_path / "train_manifest.csv", [add_clip(tmp_path, "broken", None, 40)])
    with pytest.raises(UserError, match="could not be read"):
        pair_dataset(tmp_path)[0]


def test_bad_inputs(tmp_path, data_dir, demo_frames, add_clip, plausible_boxes):
    def error(data, cls=ImagePairDataset, **kw):
        with pytest.raises(UserError) as info:
            cls(data, **kw)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "not found" in error(tmp_path / "absent")
    assert "train_manifest.csv" in error(tmp_path)
    (tmp_path / "train_manifest.csv").write_text("id,video,boxes,frames,size,fps,split,source\n")
    assert "no clips" in error(tmp_path)

    good = add_clip(tmp_path, "a", demo_frames, 40)
    val = add_clip(tmp_path, "v", demo_frames, 40, "val")
    write_train_manifest(tmp_path / "train_manifest.csv", [good, val])
    assert "clip v is in the val split" in error(tmp_path)
    assert "clip v is in the val split" in error(tmp_path, VideoDataset)
    assert len(ImagePairDataset(tmp_path, allow_val=True)) == 2

    (tmp_path / "videos" / "v.mp4").unlink()
    assert "video not found" in error(tmp_path, allow_val=True)
    write_train_manifest(tmp_path / "train_manifest.csv", [good, add_clip(tmp_path, "b", demo_frames, 40)])
    (tmp_path / "boxes" / "b.npz").unlink()
    assert "boxes not found" in error(tmp_path)
    plausible_boxes(39).save(tmp_path / "boxes" / "b.npz")
    assert "39 frames" in error(tmp_path)
    (tmp_path / "boxes" / "b.npz").write_bytes(b"junk")
    assert "cannot read boxes" in error(tmp_path)

    assert "frame reader" in error(data_dir, reader="opencv")
    assert "size" in error(data_dir, size=0)
    assert "margin" in error(data_dir, margin=-1)
    assert "stride" in error(data_dir, VideoDataset, stride=0)
    with pytest.raises(UserError):
        make_loader(pair_dataset(data_dir), 2, workers=-1)


def test_clip_input_and_masks():
    grey = np.full((48, 64, 3), 200, np.uint8)
    x = clip_input(grey, 32)
    expected = (200 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert x.shape == (3, 32, 32) and torch.allclose(x, expected[:, None, None].expand(3, 32, 32), atol=1e-5)
    # boxes in clip pixels (a 100x200 frame) scale to the canvas; corners inclusive; empty boxes draw nothing
    m = box_mask([np.array([50, 25, 99, 74]), np.array([10, 10, 5, 5])], (100, 200), 20)
    assert m.shape == (1, 20, 20)
    rows, cols = torch.nonzero(m[0], as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 15, 5, 10)


@pytest.mark.slow
def test_clip_input_matches_transformers():
    from transformers import CLIPImageProcessor

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 256, 3), dtype=np.uint8)
    ours = clip_input(img)
    theirs = CLIPImageProcessor()(images=img, return_tensors="pt").pixel_values[0]
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().mean() < 1e-3
