"""The two evaluation protocols and how a dataset entry becomes (reference, driving, ground truth).

- Self-reenactment (``protocol=self``): reference = the first frame of the video, driving = every frame
  of the video (the first included), ground truth = the video itself.
- Cross-reenactment (``protocol=cross``): a (reference image, driving video) pair; no ground truth.

Frames are decoded with PyAV, cut to the first ``max_frames`` and resized (Lanczos) to ``size`` × ``size``
when the prepared video has another size (``personalive data prepare folder`` already writes square
face-centred crops, so this is normally a no-op at 512). A driving video that is not square is refused
(resizing it would squash the face): prepare it with ``personalive data prepare folder`` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_tools.manifest import Entry
from personalive_cli.errors import UserError
from personalive_cli.faces.crop import crop_reference, resize
from personalive_cli.io.images import read_image
from personalive_cli.io.video import VideoReader

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Sample:
    entry: Entry
    reference: np.ndarray          # (size, size, 3) uint8
    driving: np.ndarray            # (n, size, size, 3) uint8
    fps: float
    audio: str | None = None       # the driving video, when it has an audio track
    audio_start: float = 0.0       # presentation time of its first frame

    def context(self) -> dict:
        """The options ``animate`` gives methods with ``takes_driving_context`` (fps, driving audio)."""
        return {"fps": self.fps, "audio": self.audio, "audio_start": self.audio_start}

    @property
    def ground_truth(self) -> np.ndarray | None:
        return self.driving if self.entry.protocol == "self" else None


def read_frames(path: Path, size: int, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    return _read(VideoReader(path), size, max_frames)


def _read(reader: VideoReader, size: int, max_frames: int | None) -> tuple[np.ndarray, float]:
    path = reader.path
    stop = len(reader) if max_frames is None else min(len(reader), max_frames)
    frames = []
    for f in reader.iter_frames(0, stop):
        if f.shape[0] != f.shape[1]:  # resizing would squash the face: crop it first
            raise UserError(f"{path}: not square ({f.shape[1]}x{f.shape[0]}); prepare the videos first: "
                            "personalive data prepare folder RAW/ DATA/ (face-centred square crops)")
        frames.append(f if f.shape[0] == size else resize(f, size))
    if not frames:
        raise UserError(f"{path}: no frames")
    return np.stack(frames), float(reader.info.fps)


def load_sample(root: Path, entry: Entry, size: int, max_frames: int | None = None) -> Sample:
    reader = VideoReader(entry.driving_path(root))
    driving, fps = _read(reader, size, max_frames)
    if entry.protocol == "self":
        reference = driving[0]
    else:
        ref_path = entry.reference_path(root)
        if ref_path is None or not ref_path.is_file():
            raise UserError(f"reference not found for {entry.id}: {ref_path}")
        if ref_path.suffix.lower() in IMAGE_EXTS:
            reference = crop_reference(read_image(ref_path), "auto", size)
        else:
            reference = resize(next(VideoReader(ref_path).iter_frames(0, 1)), size)
    return Sample(entry=entry, reference=reference, driving=driving, fps=fps,
                  audio=str(reader.path) if reader.info.has_audio else None, audio_start=reader.first_frame_time)


def run_method(method, sample: Sample) -> np.ndarray:
    """Animate one sample frame by frame through the Method/Session interface; (n, H, W, 3) uint8."""
    session = method.start(sample.reference)
    outs = []
    for frame in sample.driving:
        outs.extend(session.push(frame))
    outs.extend(session.flush())
    if len(outs) != len(sample.driving):
        raise UserError(f"method {method.name!r} produced {len(outs)} frames for {len(sample.driving)} inputs "
                        f"({sample.entry.id})")
    out = np.stack([np.asarray(o, dtype=np.uint8) for o in outs])
    if out.shape[1:3] != sample.driving.shape[1:3]:
        out = np.stack([resize(o, sample.driving.shape[1]) for o in out])
    return out
