"""Synthetic training clips on disk (the real DATA layout of ``personalive_cli.training.clips``): cartoon
faces that move and open their mouths, with exact boxes, so training tests need neither mediapipe nor a
real video. ``ImagePairDataset`` is re-exported from ``personalive_cli.training.datasets`` (the real one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import write_video

from personalive_cli.training.clips import (
    MANIFEST_NAME,
    ClipBoxes,
    TrainClip,
    write_train_manifest,
)

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
SPEC = "personalive_cli.training.datasets:ImagePairDataset"  # the stage's default, named explicitly
# What the tiny test runs share (the tiny preset plus this dataset); the shared run (tests/training/conftest.py)
# makes RUN_STEPS steps with checkpoints at 2 and 4 and validation at 0 and 4.
TINY_ARGS = ["--preset", "tiny", "--set", "checkpoint_every=2", "--set", "validate_every=4"]
RUN_STEPS = 4


# ---------------------------------------------------------------------------------------------- data on disk


def _face_frame(size: int, i: int, seed: int) -> tuple[np.ndarray, dict]:
    """A cartoon face that moves and opens its mouth over time, and its boxes."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(40, 200, 3)
    yy, xx = np.mgrid[:size, :size]
    img = np.empty((size, size, 3), np.uint8)
    img[:] = bg
    cx = size / 2 + size * 0.08 * np.sin(i / 3 + seed)
    cy = size / 2 + size * 0.05 * np.cos(i / 4 + seed)
    rx, ry = size * 0.25, size * 0.32
    img[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = (224, 172, 140)
    eyes = [(cx - rx * 0.4, cy - ry * 0.25), (cx + rx * 0.4, cy - ry * 0.25)]
    e = size * 0.04
    for ex, ey in eyes:
        img[(np.abs(xx - ex) <= e) & (np.abs(yy - ey) <= e / 2)] = (30, 30, 60)
    mw, mh = rx * 0.5, size * (0.02 + 0.02 * (1 + np.sin(i / 2)))
    my = cy + ry * 0.45
    img[(np.abs(xx - cx) <= mw) & (np.abs(yy - my) <= mh)] = (150, 40, 50)
    boxes = {"face": [cx - rx, cy - ry, cx + rx, cy + ry],
             "left_eye": [eyes[0][0] - e, eyes[0][1] - e / 2, eyes[0][0] + e, eyes[0][1] + e / 2],
             "right_eye": [eyes[1][0] - e, eyes[1][1] - e / 2, eyes[1][0] + e, eyes[1][1] + e / 2],
             "mouth": [cx - mw, my - mh, cx + mw, my + mh]}
    return img, boxes


def write_clip(root: Path, clip_id: str, frames: int = 24, size: int = 128, seed: int = 0, boxes: bool = True,
               ) -> TrainClip:
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "boxes").mkdir(parents=True, exist_ok=True)
    images, per_frame = zip(*(_face_frame(size, i, seed) for i in range(frames)), strict=True)
    write_video(root / "videos" / f"{clip_id}.mp4", list(images))
    if boxes:
        ClipBoxes(**{k: np.array([b[k] for b in per_frame], np.float32) for k in per_frame[0]},
                  detected=np.ones(frames, bool)).save(root / "boxes" / f"{clip_id}.npz")
    return TrainClip(id=clip_id, video=f"videos/{clip_id}.mp4", boxes=f"boxes/{clip_id}.npz", frames=frames,
                     size=size, fps=25.0)


def write_dataset(root: Path, n_clips: int = 2, frames: int = 24, size: int = 128) -> Path:
    """DATA/ with ``n_clips`` synthetic clips, as ``personalive data prepare`` writes it."""
    clips = [write_clip(root, f"clip{k}", frames, size, seed=k) for k in range(n_clips)]
    write_train_manifest(root / MANIFEST_NAME, clips)
    return root


# ---------------------------------------------------------------------------------------------- dataset


from personalive_cli.training.datasets import ImagePairDataset  # noqa: E402,F401 - re-exported for the tests
