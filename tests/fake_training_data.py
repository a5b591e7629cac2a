"""TEST DOUBLE until ``personalive_cli.training.datasets`` lands: synthetic training clips on disk (the real
DATA layout of ``personalive_cli.training.clips``) and an ``ImagePairDataset`` with the agreed contract
(constructor, ``dataset[k]`` a pure function of (seed, k), the sample dict and its dtypes/shapes), simple
enough to be obviously right: no augmentation, frames resized whole, boxes scaled.

Importable as ``fake_training_data`` (tests/ is on the path); the runner loads it through the config key
``dataset=fake_training_data:ImagePairDataset``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from helpers import write_video
from PIL import Image

from personalive_cli.errors import UserError
from personalive_cli.training.clips import (
    MANIFEST_NAME,
    ClipBoxes,
    TrainClip,
    read_train_manifest,
    write_train_manifest,
)

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
SPEC = "fake_training_data:ImagePairDataset"
# What the tiny test runs share (the tiny preset plus this dataset); the shared run (tests/training/conftest.py)
# makes RUN_STEPS steps with checkpoints at 2 and 4 and validation at 0 and 4.
TINY_ARGS = ["--preset", "tiny", "--set", f"dataset={SPEC}", "--set", "checkpoint_every=2", "--set", "validate_every=4"]
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


class ImagePairDataset(torch.utils.data.Dataset):
    """The agreed contract of ``personalive_cli.training.datasets.ImagePairDataset`` (see the module docstring)."""

    def __init__(self, data, size: int = 512, pose_size: int = 256, face_size: int = 224, clip_size: int = 224,
                 margin: int = 30, augment: bool = True, seed: int = 0, allow_val: bool = False):
        self.root, clips = read_train_manifest(data)
        self.clips = [c for c in clips if allow_val or c.split == "train"]
        if not self.clips:
            raise UserError(f"{data} has no training clips")
        for c in self.clips:
            if not c.video_path(self.root).is_file():
                raise UserError(f"clip {c.id}: video not found: {c.video_path(self.root)}")
            if not c.boxes_path(self.root).is_file():
                raise UserError(f"clip {c.id} has no boxes: {c.boxes_path(self.root)} (run `personalive data prepare`)")
        self.size, self.pose_size, self.face_size, self.clip_size = size, pose_size, face_size, clip_size
        self.margin, self.seed = margin, seed
        self._frames: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def _read(self, clip: TrainClip) -> np.ndarray:
        if clip.id not in self._frames:
            from personalive_cli.io.video import VideoReader

            reader = VideoReader(clip.video_path(self.root), role="training clip")
            self._frames[clip.id] = np.stack(reader.read(range(len(reader))))
        return self._frames[clip.id]

    def __getitem__(self, k: int) -> dict:
        skipped = []
        for attempt in range(len(self.clips)):
            clip = self.clips[(k + attempt) % len(self.clips)]
            try:
                frames = self._read(clip)
                boxes = ClipBoxes.load(clip.boxes_path(self.root))
            except (UserError, OSError, ValueError):
                skipped.append(clip.id)
                continue
            return self._sample(clip, frames, boxes, np.random.default_rng([self.seed, k]), ";".join(skipped))
        raise UserError("every clip is unreadable")

    def _sample(self, clip, frames, boxes, rng, skipped: str) -> dict:
        n = len(frames)
        ref = int(rng.integers(n))
        far = [i for i in range(n) if abs(i - ref) > self.margin] if n > 64 else list(range(n))
        tgt = int(rng.choice(far))
        src = frames.shape[1]

        def image(frame, side, lo=-1.0):
            x = np.asarray(Image.fromarray(frame).resize((side, side), Image.BICUBIC), np.float32) / 255
            x = torch.from_numpy(x).permute(2, 0, 1)
            return x * 2 - 1 if lo < 0 else x

        def mask(names):
            m = np.zeros((self.size, self.size), np.float32)
            for name in names:
                x1, y1, x2, y2 = (np.asarray(getattr(boxes, name)[tgt]) * self.size / src).round().astype(int)
                m[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1
            return torch.from_numpy(m)[None]

        x1, y1, x2, y2 = boxes.face[tgt]
        side = max(x2 - x1, y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        box = [int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0)), int(min(cx + side / 2, src)),
               int(min(cy + side / 2, src))]
        face = frames[tgt][box[1]:box[3], box[0]:box[2]]
        clip_img = np.asarray(Image.fromarray(frames[ref]).resize((self.clip_size,) * 2, Image.BICUBIC), np.float32)
        clip_img = (clip_img / 255 - CLIP_MEAN) / CLIP_STD
        return {"reference": image(frames[ref], self.size), "target": image(frames[tgt], self.size),
                "target_pose": image(frames[tgt], self.pose_size, lo=0.0), "target_face": image(face, self.face_size),
                "clip_image": torch.from_numpy(clip_img).permute(2, 0, 1).contiguous(),
                "face_mask": mask(["face"]), "local_mask": mask(["left_eye", "right_eye", "mouth"]),
                "clip_id": clip.id, "reference_index": ref, "target_index": tgt, "skipped": skipped}
