"""Validation strips: a few frames animated by the streaming engine from the current weights.

The same `StreamEngine` as ``personalive animate`` (4-step micro-chunk schedule), so a strip shows what the
weights would do at inference. One clip of the training data: its frame 0 is the reference, frames spread
over the clip drive it (self-reenactment). The strip has three rows — reference, driving, generated — and
one column per generated frame.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from personalive_cli.errors import UserError
from personalive_cli.io.images import resize_square
from personalive_cli.io.outputs import temp_path

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # the engine emits 3 warm-up chunks before the first driving frame comes out


def pick_clip(data: Path, clip_id: str | None):
    """The validation clip (a TrainClip) and the manifest's folder: ``clip_id``, else the first train clip."""
    from personalive_cli.training.clips import read_train_manifest

    root, clips = read_train_manifest(data)
    if clip_id is not None:
        found = [c for c in clips if c.id == clip_id]
        if not found:
            raise UserError(f"validation_clip {clip_id!r} is not in {data}")
        return root, found[0]
    train = [c for c in clips if c.split == "train"] or clips
    return root, train[0]


def read_validation_frames(data: Path, clip_id: str | None, size: int, n_generated: int,
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(reference (S, S, 3), driving (4 * steps, S, S, 3)) uint8: frame 0, and frames spread over the clip.

    The engine needs ``n_generated / 4 + 3`` steps of 4 driving frames for ``n_generated`` frames to come
    out; the first ``n_generated`` driving frames are the ones shown."""
    from personalive_cli.io.video import VideoReader

    root, clip = pick_clip(data, clip_id)
    reader = VideoReader(clip.video_path(root), role="validation clip")
    total = len(reader)
    n_drive = n_generated + 4 * WARMUP_STEPS
    indices = np.linspace(0, total - 1, num=n_drive).round().astype(int).tolist()
    frames = reader.read(sorted(set(indices + [0])))
    by_index = dict(zip(sorted(set(indices + [0])), frames, strict=True))
    reference = resize_square(by_index[0], size)
    driving = np.stack([resize_square(by_index[i], size) for i in indices])
    return reference, driving


@torch.no_grad()
def generate_strip(models, reference: np.ndarray, driving: np.ndarray, n_generated: int, size: int,
                   device: torch.device, seed: int) -> np.ndarray:
    """Run the engine and lay out the strip: (3 S, n S, 3) uint8."""
    from personalive_cli.pipeline.engine import CHUNK, StreamEngine

    engine = StreamEngine(models, size=size, device=device, dtype=torch.float32, seed=seed)
    engine.set_reference(reference)
    generated = []
    for i in range(len(driving) // CHUNK):
        out = engine.step(driving[i * CHUNK:(i + 1) * CHUNK], decode_warmup=False)
        if not out.warmup:
            generated.extend(out.frames)
    generated = np.stack(generated[:n_generated])
    rows = [np.concatenate([reference] * n_generated, axis=1), np.concatenate(list(driving[:n_generated]), axis=1),
            np.concatenate(list(generated), axis=1)]
    return np.concatenate(rows, axis=0)


def save_png(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
