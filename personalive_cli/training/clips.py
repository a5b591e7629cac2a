"""Training data on disk: clips, their per-frame face boxes, and the training manifest.

``personalive data prepare`` writes, and the training datasets read::

    DATA/
      videos/<id>.mp4         square face-centred clip (512² at 25 fps by default)
      boxes/<id>.npz          per-frame boxes of that clip (below)
      train_manifest.csv      one row per clip: id, video, boxes, frames, size, fps, split, source
      manifest.csv            the bench manifest (self-reenactment) of the same clips

``boxes/<id>.npz`` (numpy ``savez``, no pickles) holds float32 arrays of shape (n_frames, 4), boxes as
``[x1, y1, x2, y2]`` in pixels of the clip: ``face`` (all 468 FaceMesh points), ``left_eye``,
``right_eye`` (their lid contour points; left and right as seen in the image, as the official boxes
name them) and ``mouth`` (outer and inner lip contours); plus ``detected``,
bool (n_frames,): False where FaceMesh found no face and the previous frame's boxes were copied.

``split`` is ``train`` for training data, ``val`` for an evaluation split (TalkingHead-1KH's official
test set): datasets refuse ``val`` clips unless asked to, so an evaluation set is never trained on by
accident. Paths in the manifest are relative to its folder.
"""

from __future__ import annotations

import csv
import os
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from personalive_cli.errors import UserError

MANIFEST_NAME = "train_manifest.csv"
BOX_NAMES = ("face", "left_eye", "right_eye", "mouth")
SPLITS = ("train", "val")


@dataclass
class ClipBoxes:
    """Per-frame boxes of one clip; each array (n, 4) float32 [x1, y1, x2, y2] in clip pixels."""

    face: np.ndarray
    left_eye: np.ndarray
    right_eye: np.ndarray
    mouth: np.ndarray
    detected: np.ndarray  # (n,) bool

    def __post_init__(self) -> None:
        n = len(self.detected)
        for name in BOX_NAMES:
            arr = getattr(self, name)
            if arr.shape != (n, 4):
                raise ValueError(f"{name} boxes have shape {arr.shape}, expected ({n}, 4)")

    def __len__(self) -> int:
        return len(self.detected)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a temporary name, then a rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.stem}.part.npz")
        np.savez(tmp, **{k: np.asarray(getattr(self, k), dtype=np.float32) for k in BOX_NAMES},
                 detected=np.asarray(self.detected, dtype=bool))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClipBoxes:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"boxes not found: {path} (run `personalive data prepare` on the clips)")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in (*BOX_NAMES, "detected") if k not in data]
                if missing:
                    raise UserError(f"{path}: not a boxes file (no {', '.join(missing)})")
                return cls(**{k: data[k].astype(np.float32) for k in BOX_NAMES},
                           detected=data["detected"].astype(bool))
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise UserError(f"cannot read boxes {path}: {exc}") from None


@dataclass
class TrainClip:
    """One row of the training manifest."""

    id: str
    video: str
    boxes: str
    frames: int
    size: int
    fps: float
    split: str = "train"
    source: str = ""

    def video_path(self, root: Path) -> Path:
        return _resolve(root, self.video)

    def boxes_path(self, root: Path) -> Path:
        return _resolve(root, self.boxes)


def _resolve(root: Path, p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else root / path


def write_train_manifest(path: str | os.PathLike, clips: list[TrainClip]) -> Path:
    """Write atomically, rows sorted by id (stable across resumed and sharded runs)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    with tmp.open("w", newline="") as f:
        names = [fl.name for fl in fields(TrainClip)]
        w = csv.writer(f)
        w.writerow(names)
        # attribute reads, not dataclasses.asdict (a deep copy per row: seconds for a large dataset)
        w.writerows([getattr(c, n) for n in names] for c in sorted(clips, key=lambda c: c.id))
    os.replace(tmp, path)
    return path


def read_train_manifest(data: str | os.PathLike) -> tuple[Path, list[TrainClip]]:
    """DATA (a folder holding ``train_manifest.csv``, or the file) -> (root, clips). Every error a user can
    cause (no such folder, no manifest, a malformed or empty one) is one UserError line."""
    data = Path(data)
    path = data / MANIFEST_NAME if data.is_dir() else data
    if not data.exists():
        raise UserError(f"dataset not found: {data}")
    if not path.is_file():
        raise UserError(f"{data} has no {MANIFEST_NAME}: prepare it with `personalive data prepare folder SRC {data}`")
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    clips = []
    for i, row in enumerate(rows, start=1):
        try:
            clip = TrainClip(id=row["id"], video=row["video"], boxes=row["boxes"], frames=int(row["frames"]),
                             size=int(row["size"]), fps=float(row["fps"]), split=row.get("split") or "train",
                             source=row.get("source") or "")
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path} row {i}: malformed ({exc})") from None
        if clip.split not in SPLITS:
            raise UserError(f"{path} row {i}: unknown split {clip.split!r} (use {' or '.join(SPLITS)})")
        clips.append(clip)
    if not clips:
        raise UserError(f"{path} lists no clips")
    return path.parent, clips
