"""Offline animation: reference image + driving video file → video file, through any registered method."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from personalive_cli import registry
from personalive_cli.devices import resolve
from personalive_cli.errors import UserError
from personalive_cli.faces.crop import FaceCropper, crop_reference
from personalive_cli.io.images import read_reference
from personalive_cli.io.outputs import check_output_file
from personalive_cli.io.overlap import WriteBehind, read_ahead
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
    reference_frame: int = 0  # when the reference is a video: which of its frames


@dataclass
class AnimateResult:
    path: Path
    frames: int
    fps: Fraction
    audio: bool


def check_method(name: str, size: int, device: str, dtype: str, weights: str | None, random_weights: bool = False):
    """Everything about a method that can be wrong before it is built (quick: nothing is loaded):
    its name, the size, the device and dtype, whether its weights are there. Returns the class,
    torch device and dtype."""
    cls = registry.get(name)
    cls.check_size(size)
    torch_device, torch_dtype = resolve(device, dtype, cls.uses_torch)
    status = None if random_weights else cls.status(weights)
    if status is not None and not status.ready:
        hint = f"; to set it up: {', '.join(status.needs)}" if status.needs else ""
        raise UserError(f"method {name!r} is not ready: {status.detail}{hint}")
    return cls, torch_device, torch_dtype


def build_method(name: str, size: int, device: str, dtype: str, seed: int, weights: str | None,
                 **options) -> registry.Method:
    """Look up, validate and instantiate a method (one clear error for each thing that is wrong)."""
    cls, torch_device, torch_dtype = check_method(name, size, device, dtype, weights,
                                                  bool(options.get("random_weights")))
    return cls(weights=weights, device=torch_device, dtype=torch_dtype, size=size, seed=seed, **options)


def animate(reference: str | Path, driving: str | Path, output: str | Path, opts: AnimateOptions,
            on_start: Callable[[int, Fraction], None] | None = None,
            on_frame: Callable[[], None] | None = None) -> AnimateResult:
    """Animate ``reference`` with ``driving`` into ``output`` (a video whose container follows its
    extension, driving audio muxed in sync). Every input is checked before the method is built."""
    output = check_output_file(output, inputs=[reference, driving])
    if opts.frames is not None and opts.frames < 1:
        raise UserError("--frames must be at least 1")
    if opts.fps is not None and opts.fps <= 0:
        raise UserError(f"--fps must be positive, got {opts.fps}")
    ref_image = read_reference(reference, opts.reference_frame)
    reader = VideoReader(driving)
    fps, indices = reader.output_plan(Fraction(opts.fps).limit_denominator(1001) if opts.fps else None,
                                      limit=opts.frames)
    audio_start = reader.frame_time(indices[0]) if indices else 0.0
    options = dict(opts.method_options or {})
    if registry.get(opts.method).takes_driving_context:
        # e.g. audio-driven baselines: the clip's fps and the driving audio, aligned to the first frame
        options.update(fps=float(fps), audio=str(driving) if reader.info.has_audio else None, audio_start=audio_start)
    check_method(opts.method, opts.size, opts.device, opts.dtype, opts.weights,
                 bool(options.get("random_weights")))
    with contextlib.ExitStack() as stack:
        cropper = FaceCropper(opts.crop, opts.size)
        stack.callback(cropper.close)
        reference_crop = crop_reference(ref_image, opts.crop, opts.size)
        method = build_method(opts.method, opts.size, opts.device, opts.dtype, opts.seed, opts.weights, **options)
        if on_start:
            on_start(len(indices), fps)
        session = method.start(reference_crop)
        writer = VideoWriter(output, fps, crf=opts.crf, audio_from=driving if reader.info.has_audio else None,
                             audio_start=audio_start)
        # decode + face crop run ahead in a thread, encoding behind in another: the model does not wait for them
        behind = WriteBehind(writer.write)
        try:
            def emit(frames):
                for out in frames:
                    behind.put(out)
                    if on_frame:
                        on_frame()

            def driving_crops():
                for frame in reader.iter_indices(indices):
                    yield from cropper.crop(frame)
                yield from cropper.flush()

            crops = read_ahead(driving_crops())
            stack.callback(crops.close)
            for cropped in crops:
                emit(session.push(cropped))
            emit(session.flush())
            behind.finish()
            if writer.frames != len(indices):
                raise UserError(f"method {opts.method!r} produced {writer.frames} frames for {len(indices)} inputs")
            path = writer.close()
        except BaseException:
            behind.cancel()
            writer.abort()
            raise
    return AnimateResult(path=path, frames=writer.frames, fps=fps, audio=reader.info.has_audio)
