"""Live streaming: a driving source → any method → stdout (y4m / rgb24) or an ffmpeg process."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from personalive_cli import registry
from personalive_cli.errors import UserError
from personalive_cli.faces.crop import FaceCropper, crop_reference
from personalive_cli.io.images import read_reference
from personalive_cli.io.outputs import check_output_file
from personalive_cli.io.stream import LiveBuffer, Sink, ffmpeg_sink, is_file_target, open_source
from personalive_cli.pipeline.animate import build_method


@dataclass
class LiveOptions:
    method: str = "personalive"
    fmt: str = "y4m"
    to: str | None = None
    size: int = 512
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 42
    crop: str = "auto"
    realtime: bool | None = None
    input_format: str = "auto"
    input_size: str | None = None
    input_fps: float = 25.0
    weights: str | None = None
    method_options: dict | None = None
    reference_frame: int = 0  # when the reference is a video: which of its frames


@dataclass
class StreamStats:
    received: int = 0
    written: int = 0
    dropped: int = 0
    closed: bool = False  # the reader of stdout went away (e.g. `| head -c`): a normal end


def _silence_stdout() -> None:
    """After a broken pipe, point fd 1 at /dev/null so the interpreter's final flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run_stream(reference: str | Path, source_spec: str, opts: LiveOptions) -> StreamStats:
    if opts.to and is_file_target(opts.to):
        check_output_file(opts.to, inputs=[reference, source_spec])
    ref_image = read_reference(reference, opts.reference_frame)
    if opts.fmt not in ("y4m", "rgb24"):
        raise UserError(f"unknown --format {opts.fmt!r}; choose y4m or rgb24")
    if not registry.get(opts.method).streamable:
        raise UserError(f"method {opts.method!r} runs its upstream code on a whole clip and cannot stream; "
                        "use `personalive animate`")
    method = build_method(opts.method, opts.size, opts.device, opts.dtype, opts.seed, opts.weights,
                          **(opts.method_options or {}))
    source = open_source(source_spec, opts.input_format, opts.input_size, opts.input_fps, opts.realtime)
    sink = ffmpeg_sink(opts.to, source.fps) if opts.to else Sink(sys.stdout.buffer, opts.fmt, source.fps)
    cropper = FaceCropper(opts.crop, opts.size)
    stats = StreamStats()
    ok = False
    try:
        session = method.start(crop_reference(ref_image, opts.crop, opts.size))
        buffer = None
        if source.live:
            # Keep at most two steps of input waiting: beyond that, waiting frames only add latency.
            buffer = LiveBuffer(source, capacity=2 * method.frames_per_step, pace=not source_spec.startswith("/dev/"))
            batches = iter(buffer)
        else:
            batches = ([f] for f in source.frames)

        def emit(frames):
            for out in frames:
                sink.write(out)
                stats.written += 1

        for batch in batches:
            for frame in batch:
                if buffer is None:
                    stats.received += 1
                for cropped in cropper.crop(frame):
                    emit(session.push(cropped))
        for cropped in cropper.flush():
            emit(session.push(cropped))
        emit(session.flush())
        if buffer is not None:
            stats.received, stats.dropped = buffer.received, buffer.dropped
        ok = True
    except BrokenPipeError:
        if sink.process is not None:
            # ffmpeg went away mid-stream (refused connection, full disk): that is an error, with its reason
            sink.close(ok=False)
            raise UserError(f"ffmpeg stopped reading the stream: {sink.ffmpeg_error() or 'no message'}") from None
        stats.closed = True
        _silence_stdout()
        ok = True
    finally:
        cropper.close()
        if not stats.closed and not sink.closed:
            try:
                sink.close(ok=ok)
            except BrokenPipeError:
                stats.closed = True
                _silence_stdout()
    return stats
