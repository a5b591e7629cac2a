"""Torch datasets of the three training stages, read from a DATA folder (``training/clips.py``).

* :class:`ImagePairDataset` (stages I and II): a reference frame and a target frame of one clip,
  at least ``margin`` frames apart when the clip is long enough, with the target's pose input, its
  augmented motion-encoder face crop and its face / eye+mouth masks.
* :class:`VideoDataset` (stage III): ``frames`` target frames spread over a ``span``-frame window (40
  at stride 4 over 157 frames), the same per-frame tensors, and one reference frame of the clip.

**Sample numbers.** ``dataset[k]`` takes any k >= 0, the *global* sample number, and is a pure function
of ``(seed, k)``: epoch ``k // len(dataset)`` shuffles the clips with its own seeded permutation, and
every random choice of the sample (frames, augmentation) comes from a generator seeded with
``(seed, k)``. A trainer resumes bit for bit, and shards across ranks, only by choosing which k to ask
for (:class:`GlobalSampler`, :func:`make_loader`).

**Bad clips.** A clip that cannot be read (an unreadable video or boxes file, a frame count that
disagrees with the manifest, no face found on its first frame, a face box outside the frame) is
skipped: the sample goes on to the clip at the next position of the epoch's permutation, the clip is
logged once (per process), and the sample's ``skipped`` field names it (";"-joined ids), so the trainer
can count what was skipped. Problems visible without decoding (missing files, boxes of the wrong
length, evaluation clips) are refused when the dataset is built, one UserError line each.

Conventions follow the official recipe (training.md §3.3-3.4): frames resized with bilinear
filtering; images in [-1, 1] except the pose input (the keypoint extractor's, in [0, 1]) and the CLIP
input (CLIP's normalisation); masks filled boxes at the frame size, scaled from clip pixels.
"""

from __future__ import annotations

import logging
import operator
import os
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from personalive_cli.errors import UserError
from personalive_cli.training.augment import FaceAugmentor
from personalive_cli.training.clips import BOX_NAMES, MANIFEST_NAME, ClipBoxes, TrainClip, read_train_manifest
from personalive_cli.training.frames import CorruptVideo, FrameOpener, frame_opener

logger = logging.getLogger(__name__)

# CLIP's normalisation (transformers.utils.constants OPENAI_CLIP_MEAN / OPENAI_CLIP_STD), written out
# so the datasets do not import transformers (seconds) in every worker.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# A sample gives up after this many unreadable clips in a row (or after trying every clip).
MAX_TRIES = 100


class CorruptClip(Exception):
    """A clip that cannot make a sample; the dataset skips it."""


@dataclass(frozen=True)
class _Entry:
    clip: TrainClip
    video: Path
    boxes: Path
    face_on_first: bool  # FaceMesh found a face on frame 0 (else the boxes are empty there)


# --------------------------------------------------------------------------------------------------
# image helpers (numpy uint8 HWC in, float32 CHW tensors out)


def _resize(img: np.ndarray, size: int, resample=Image.BILINEAR) -> np.ndarray:
    """Resize to size x size with PIL (what torchvision's Resize on a PIL image does)."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), resample))


def _signed(img: np.ndarray) -> torch.Tensor:
    """uint8 (h, w, 3) -> float32 (3, h, w) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)


def _unit(img: np.ndarray) -> torch.Tensor:
    """uint8 (h, w, 3) -> float32 (3, h, w) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


def clip_input(img: np.ndarray, size: int = 224) -> torch.Tensor:
    """CLIP's image processor on an RGB uint8 frame -> (3, size, size): shortest side resized to
    ``size`` (bicubic, as transformers' PIL-based CLIPImageProcessor), centre crop, CLIP mean/std."""
    h, w = img.shape[:2]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    pil = Image.fromarray(img)
    if (new_h, new_w) != (h, w):
        pil = pil.resize((new_w, new_h), Image.BICUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    arr = np.asarray(pil)[top:top + size, left:left + size].astype(np.float32) / 255.0
    arr = (arr - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def box_mask(boxes: list[np.ndarray], frame_hw: tuple[int, int], size: int) -> torch.Tensor:
    """Filled boxes ``[x1, y1, x2, y2]`` (clip pixels of a frame ``frame_hw``) on a size x size canvas
    -> float32 (1, size, size) in {0, 1}. Corners are inclusive (as a filled OpenCV rectangle); a box
    with x2 < x1 or y2 < y1 (an empty one) draws nothing."""
    mask = np.zeros((size, size), np.float32)
    sy, sx = size / frame_hw[0], size / frame_hw[1]
    for x1, y1, x2, y2 in boxes:
        if x2 < x1 or y2 < y1:
            continue
        c1, c2 = max(0, round(x1 * sx)), min(size - 1, round(x2 * sx))
        r1, r2 = max(0, round(y1 * sy)), min(size - 1, round(y2 * sy))
        if c1 <= c2 and r1 <= r2:
            mask[r1:r2 + 1, c1:c2 + 1] = 1.0
    return torch.from_numpy(mask)[None]


def face_crop(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The motion encoder's crop: a square of side max(w, h) centred on the face box, no margin,
    clipped to the image (so it is not square at an edge)."""
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
    left, right = max(0, round(cx - side / 2)), min(w, round(cx + side / 2))
    top, bottom = max(0, round(cy - side / 2)), min(h, round(cy + side / 2))
    if right - left < 2 or bottom - top < 2:
        raise CorruptClip(f"face box {[round(v, 1) for v in (x1, y1, x2, y2)]} is outside the {w}x{h} frame")
    return img[top:bottom, left:right]


# --------------------------------------------------------------------------------------------------


def _boxes_facts(path: Path) -> tuple[int, bool]:
    """(frames, face found on frame 0) of a boxes file, reading only its ``detected`` array."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "detected" not in data:
                raise UserError(f"{path}: not a boxes file (no detected array)")
            detected = data["detected"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read boxes {path}: {exc}") from None
    return len(detected), bool(len(detected) and detected[0])


class _ClipDataset(torch.utils.data.Dataset, ABC):
    """What both datasets share: the validated clip list, the seeded order, skipping bad clips."""

    def __init__(self, data: str | os.PathLike, size: int, pose_size: int, face_size: int, clip_size: int,
                 augment: bool, seed: int, allow_val: bool, reader):
        for name, value in (("size", size), ("pose_size", pose_size), ("face_size", face_size),
                            ("clip_size", clip_size)):
            if int(value) != value or value < 8:
                raise UserError(f"{name} must be an integer of at least 8, got {value}")
        self.size, self.pose_size = int(size), int(pose_size)
        self.face_size, self.clip_size = int(face_size), int(clip_size)
        self.augment, self.seed = bool(augment), int(seed)
        self.opener: FrameOpener = frame_opener(reader)
        root, clips = read_train_manifest(data)
        self.root = root
        manifest = root / MANIFEST_NAME if Path(data).is_dir() else Path(data)
        entries = []
        for clip in clips:
            if clip.split == "val" and not allow_val:
                raise UserError(f"{manifest}: clip {clip.id} is in the val split (an evaluation set, never "
                                "trained on); remove it or allow val clips explicitly")
            if clip.frames < 1:
                raise UserError(f"{manifest}: clip {clip.id} has {clip.frames} frames")
            video, boxes = clip.video_path(root), clip.boxes_path(root)
            if not video.is_file():
                raise UserError(f"clip {clip.id}: video not found: {video}")
            if not boxes.is_file():
                raise UserError(f"clip {clip.id}: boxes not found: {boxes} (run `personalive data prepare`)")
            n, face0 = _boxes_facts(boxes)
            if n != clip.frames:
                raise UserError(f"{boxes}: boxes for {n} frames, but {manifest.name} says clip {clip.id} has "
                                f"{clip.frames}")
            entries.append(_Entry(clip, video, boxes, face0))
        self.entries = entries
        self._orders: dict[int, np.ndarray] = {}
        self._warned: set[str] = set()
        self._augmentor = FaceAugmentor()

    def __len__(self) -> int:
        return len(self.entries)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation of the clips (seeded by (seed, epoch))."""
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.clear()
            rng = np.random.default_rng([self.seed, epoch, 0x0D5])
            self._orders[epoch] = rng.permutation(len(self.entries))
        return self._orders[epoch]

    def __getitem__(self, k: int) -> dict:
        k = operator.index(k)
        if k < 0:
            raise IndexError(f"sample numbers start at 0, got {k}")
        epoch, pos = divmod(k, len(self.entries))
        order = self.order(epoch)
        skipped: list[str] = []
        last = ""
        for attempt in range(min(MAX_TRIES, len(self.entries))):
            entry = self.entries[order[(pos + attempt) % len(order)]]
            rng = np.random.default_rng([self.seed, k, attempt])
            try:
                if not entry.face_on_first:
                    raise CorruptClip("no face found on its first frame")
                sample = self._sample(entry, rng)
            except (CorruptClip, CorruptVideo, UserError) as exc:
                last = f"{entry.clip.id}: {exc}"
                if entry.clip.id not in self._warned:
                    self._warned.add(entry.clip.id)
                    logger.warning("skipping clip %s", last)
                skipped.append(entry.clip.id)
                continue
            sample["clip_id"] = entry.clip.id
            sample["skipped"] = ";".join(skipped)
            return sample
        raise UserError(f"sample {k}: {len(skipped)} clips in a row could not be read (last: {last})")

    # ---- per-sample helpers

    def _read(self, entry: _Entry, indices: list[int]) -> tuple[np.ndarray, ClipBoxes]:
        boxes = ClipBoxes.load(entry.boxes)
        if len(boxes) != entry.clip.frames:
            raise CorruptClip(f"its boxes file now has {len(boxes)} frames, the manifest says "
                              f"{entry.clip.frames}")
        if not all(np.isfinite(getattr(boxes, name)[indices]).all() for name in BOX_NAMES):
            raise CorruptClip("its boxes are not finite on the chosen frames")
        with self.opener(entry.video) as video:
            if len(video) != entry.clip.frames:
                raise CorruptClip(f"the video has {len(video)} frames, the manifest says {entry.clip.frames}")
            frames = video.read(indices)
        return frames, boxes

    def _face(self, frame: np.ndarray, box: np.ndarray, rng: np.random.Generator, axis: int, scale: float):
        """The target's motion-encoder input (3, F, F) in [-1, 1]."""
        patch = face_crop(frame, box)
        if self.augment:
            patch = self._augmentor(patch, rng, axis, scale)
        return _signed(_resize(np.ascontiguousarray(patch), self.face_size))

    def _target(self, frame: np.ndarray, boxes: ClipBoxes, t: int, rng, axis: int, scale: float) -> dict:
        hw = frame.shape[:2]
        return {
            "target": _signed(_resize(frame, self.size)),
            "target_pose": _unit(_resize(frame, self.pose_size)),
            "target_face": self._face(frame, boxes.face[t], rng, axis, scale),
            "face_mask": box_mask([boxes.face[t]], hw, self.size),
            "local_mask": box_mask([boxes.left_eye[t], boxes.right_eye[t], boxes.mouth[t]], hw, self.size),
        }

    @abstractmethod
    def _sample(self, entry: _Entry, rng: np.random.Generator) -> dict:
        """One sample of the clip, every random choice drawn from ``rng``; raises CorruptClip/CorruptVideo."""


class ImagePairDataset(_ClipDataset):
    """Stages I/II: one (reference, target) pair of frames per sample.

    Sample (float32 tensors; S = size, P = pose_size, F = face_size, C = clip_size):
    ``reference``, ``target`` (3, S, S) in [-1, 1]; ``target_pose`` (3, P, P) in [0, 1];
    ``target_face`` (3, F, F) in [-1, 1] (augmented when ``augment``); ``clip_image`` (3, C, C), CLIP-
    normalised reference; ``face_mask``, ``local_mask`` (1, S, S) in {0, 1}; plus ``clip_id``,
    ``reference_index``, ``target_index`` and ``skipped`` (see the module docstring).

    The target lies outside ``reference ± margin`` frames when the clip has more than 2*margin+4 frames
    (more than 64 with the default 30), else anywhere in the clip (the reference frame included).
    """

    def __init__(self, data: str | os.PathLike, size: int = 512, pose_size: int = 256, face_size: int = 224,
                 clip_size: int = 224, margin: int = 30, augment: bool = True, seed: int = 0,
                 allow_val: bool = False, reader=None):
        if int(margin) != margin or margin < 0:
            raise UserError(f"margin must be a non-negative integer, got {margin}")
        self.margin = int(margin)
        super().__init__(data, size, pose_size, face_size, clip_size, augment, seed, allow_val, reader)

    def pair(self, n: int, rng: np.random.Generator) -> tuple[int, int]:
        """(reference, target) frame indices in a clip of n frames."""
        ref = int(rng.integers(n))
        if n > 2 * self.margin + 4:
            lo, hi = max(0, ref - self.margin), min(n, ref + self.margin)
            # uniform over [0, lo) and [hi, n): at least n - 2*margin >= 5 frames
            j = int(rng.integers(lo + n - hi))
            return ref, j if j < lo else hi + (j - lo)
        return ref, int(rng.integers(n))

    def _sample(self, entry: _Entry, rng: np.random.Generator) -> dict:
        ref, tgt = self.pair(entry.clip.frames, rng)
        frames, boxes = self._read(entry, [ref, tgt])
        axis, scale = int(rng.random() < 0.5), float(rng.uniform(1.0, 1.3))
        sample = {"reference": _signed(_resize(frames[0], self.size)),
                  **self._target(frames[1], boxes, tgt, rng, axis, scale),
                  "clip_image": clip_input(frames[0], self.clip_size),
                  "reference_index": ref, "target_index": tgt}
        return sample


class VideoDataset(_ClipDataset):
    """Stage III: ``frames`` target frames of one clip and a reference frame.

    The window covers ``min(len, span)`` frames from a random start (``span`` defaults to
    (frames - 1) * stride + 1: 157 for 40 frames at stride 4) and the frames are spread over it by
    linspace (stride 4 when the clip is long enough, repeats in a very short clip). The reference is
    any frame of the clip, inside the window or not. The face crop's aspect jitter (axis, scale in
    1.0-1.2) is drawn once per clip; colour, affine and noise jitter are drawn per frame.

    Sample (n = frames): ``reference`` (3, S, S); ``clip_image`` (3, C, C); ``frames`` (n, 3, S, S) and
    ``faces`` (n, 3, F, F) in [-1, 1]; ``poses`` (n, 3, P, P) in [0, 1]; ``face_masks``, ``local_masks``
    (n, 1, S, S) in {0, 1}; ``indices`` (n,) long; ``reference_index``, ``clip_id``, ``skipped``.
    """

    def __init__(self, data: str | os.PathLike, frames: int = 40, stride: int = 4, span: int | None = None,
                 size: int = 512, pose_size: int = 256, face_size: int = 224, clip_size: int = 224,
                 augment: bool = True, seed: int = 0, allow_val: bool = False, reader=None):
        span = (frames - 1) * stride + 1 if span is None else span
        for name, value in (("frames", frames), ("stride", stride), ("span", span)):
            if int(value) != value or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value}")
        self.frames, self.stride, self.span = int(frames), int(stride), int(span)
        super().__init__(data, size, pose_size, face_size, clip_size, augment, seed, allow_val, reader)

    def window(self, n: int, rng: np.random.Generator) -> list[int]:
        """The frame indices of one sample in a clip of n frames."""
        span = min(n, self.span)
        start = int(rng.integers(n - span + 1))
        return np.linspace(start, start + span - 1, self.frames).astype(int).tolist()

    def _sample(self, entry: _Entry, rng: np.random.Generator) -> dict:
        n = entry.clip.frames
        indices = self.window(n, rng)
        ref = int(rng.integers(n))
        frames, boxes = self._read(entry, [ref, *indices])
        axis, scale = int(rng.random() < 0.5), float(rng.uniform(1.0, 1.2))
        per_frame = [self._target(frame, boxes, t, rng, axis, scale)
                     for frame, t in zip(frames[1:], indices, strict=True)]

        def stack(key):
            return torch.stack([p[key] for p in per_frame])

        return {"reference": _signed(_resize(frames[0], self.size)),
                "clip_image": clip_input(frames[0], self.clip_size),
                "frames": stack("target"), "poses": stack("target_pose"), "faces": stack("target_face"),
                "face_masks": stack("face_mask"), "local_masks": stack("local_mask"),
                "indices": torch.tensor(indices, dtype=torch.long), "reference_index": ref}


# --------------------------------------------------------------------------------------------------


class GlobalSampler(torch.utils.data.Sampler):
    """Batches of global sample numbers for one rank: batch ``step`` of rank ``rank`` holds
    k = start + step*batch_size*world + rank*batch_size + j, j < batch_size. Ranks never share a k,
    and a run resumed with ``start`` = samples already consumed (steps done * batch_size * world)
    continues the same sequence. Endless unless ``steps`` is given."""

    def __init__(self, batch_size: int, start: int = 0, rank: int = 0, world: int = 1,
                 steps: int | None = None):
        if batch_size < 1 or world < 1 or not 0 <= rank < world or start < 0 or (steps or 0) < 0:
            raise UserError(f"bad sampler settings: batch_size={batch_size} start={start} rank={rank} "
                            f"world={world} steps={steps}")
        self.batch_size, self.start, self.rank, self.world, self.steps = batch_size, start, rank, world, steps

    def batch(self, step: int) -> list[int]:
        first = self.start + step * self.batch_size * self.world + self.rank * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self):
        step = 0
        while self.steps is None or step < self.steps:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless GlobalSampler has no length")
        return self.steps


def worker_context() -> str | None:
    """Start DataLoader workers from a forkserver where there is one (Linux), not by forking the training
    process: a fork copies the locks of threads that OpenCV, OpenMP or a video decoder may hold at that
    moment, and a worker then hangs on its first call into that library (seen in the full test run).
    None (the platform default, spawn) elsewhere."""
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None


def _worker_init(_worker_id: int) -> None:
    # one thread per worker: the workers are the parallelism (OpenCV and torch would each start a pool)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    torch.set_num_threads(1)


def make_loader(dataset: _ClipDataset, batch_size: int, start: int = 0, rank: int = 0, world: int = 1,
                workers: int = 4, pin_memory: bool | None = None, steps: int | None = None,
                prefetch_factor: int = 2) -> torch.utils.data.DataLoader:
    """A DataLoader yielding the batches of :class:`GlobalSampler` (``clip_id`` and ``skipped`` come out
    as lists of strings). ``pin_memory`` defaults to whether CUDA is available."""
    if workers < 0:
        raise UserError(f"workers must be >= 0, got {workers}")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra = {"prefetch_factor": prefetch_factor, "persistent_workers": True} if workers else {}
    sampler = GlobalSampler(batch_size, start, rank, world, steps)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                       pin_memory=pin_memory, worker_init_fn=_worker_init,
                                       multiprocessing_context=worker_context() if workers else None, **extra)
