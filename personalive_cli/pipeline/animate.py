"""Offline animation: reference image + driving video file → mp4, through any registered method."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from personalive_cli import registry
from personalive_cli.devices import resolve_device, resolve_dtype
from personalive_cli.errors import UserError
from personalive_cli.faces.crop import FaceCropper, crop_reference
from personalive_cli.io.images import read_image
from personalive_cli.io.video import VideoReader, VideoWriter


@dataclass
class AnimateOptions:
    method: str = "still"
    frames: int | None = None
    size: int = 512
    fps: float | None = None
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 42
    crop: str = "auto"
    weights: str | None = None
    crf: int = 18
    method_options: dict | None = None


@dataclass
class AnimateResult:
    path: Path
    frames: int
    fps: Fraction
    audio: bool


def build_method(name: str, size: int, device: str, dtype: str, seed: int, weights: str | None,
                 **options) -> registry.Method:
    """Look up, validate and instantiate a method (one clear error for each thing that is wrong)."""
    cls = registry.get(name)
    cls.check_size(size)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    status = cls.status(weights) if not options.get("random_weights") else None
    if status is not None and not status.ready:
        hint = f"; to set it up: {', '.join(status.needs)}" if status.needs else ""
        raise UserError(f"method {name!r} is not ready: {status.detail}{hint}")
    return cls(weights=weights, device=torch_device, dtype=torch_dtype, size=size, seed=seed, **options)


def driving_frames(reader: VideoReader, indices: list[int]) -> Iterator[np.ndarray]:
    """Decode sequentially, emitting each source frame as often as ``indices`` (non-decreasing) names it."""
    if not indices:
        return
    pos = 0
    for i, frame in enumerate(reader.iter_frames(indices[0], indices[-1] + 1), start=indices[0]):
        while pos < len(indices) and indices[pos] == i:
            yield frame
            pos += 1


def animate(reference: str | Path, driving: str | Path, output: str | Path, opts: AnimateOptions,
            on_start: Callable[[int, Fraction], None] | None = None,
            on_frame: Callable[[], None] | None = None) -> AnimateResult:
    """Animate ``reference`` with ``driving`` into ``output`` (H.264 mp4, driving audio muxed in sync)."""
    output = Path(output)
    if not output.parent.is_dir():
        raise UserError(f"output folder does not exist: {output.parent}")
    ref_image = read_image(reference)
    reader = VideoReader(driving)
    if opts.frames is not None and opts.frames < 1:
        raise UserError("--frames must be at least 1")
    if opts.fps is not None and opts.fps <= 0:
        raise UserError(f"--fps must be positive, got {opts.fps}")
    if opts.fps:
        fps = Fraction(opts.fps).limit_denominator(1001)
        indices = reader.resampled_indices(fps, limit=opts.frames)
    else:
        fps = reader.info.fps
        indices = list(range(min(len(reader), opts.frames or len(reader))))
    audio_start = reader.frame_time(indices[0]) if indices else 0.0
    options = dict(opts.method_options or {})
    if registry.get(opts.method).takes_driving_context:
        # e.g. audio-driven baselines: the clip's fps and the driving audio, aligned to the first frame
        options.update(fps=float(fps), audio=str(driving) if reader.info.has_audio else None, audio_start=audio_start)
    method = build_method(opts.method, opts.size, opts.device, opts.dtype, opts.seed, opts.weights, **options)
    if on_start:
        on_start(len(indices), fps)
    cropper = FaceCropper(opts.crop, opts.size)
    session = method.start(crop_reference(ref_image, opts.crop, opts.size))
    writer = VideoWriter(output, fps, crf=opts.crf, audio_from=driving if reader.info.has_audio else None,
                         audio_start=audio_start)
    try:
        def emit(frames):
            for out in frames:
                writer.write(out)
                if on_frame:
                    on_frame()

        for frame in driving_frames(reader, indices):
            for cropped in cropper.crop(frame):
                emit(session.push(cropped))
        for cropped in cropper.flush():
            emit(session.push(cropped))
        emit(session.flush())
        if writer.frames != len(indices):
            raise UserError(f"method {opts.method!r} produced {writer.frames} frames for {len(indices)} inputs")
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        cropper.close()
    return AnimateResult(path=path, frames=writer.frames, fps=fps, audio=reader.info.has_audio)
