"""Live streaming: a driving source → any method → stdout (y4m / rgb24) or an ffmpeg process."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
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
    interrupted: bool = False  # SIGINT / SIGTERM ended the stream: a normal end, every written frame kept


class StopSignals:
    """SIGINT and SIGTERM while streaming are the end of the stream, not an error: the first one raises
    KeyboardInterrupt in the main thread, except inside :meth:`shield` (writing a frame, closing the
    output), where it is held until the shielded part is done, so the output never ends in half a frame
    and ffmpeg always gets its end of input. Later signals are only counted: the clean-up they would
    cut short is bounded by timeouts. The previous handlers come back on exit; an ignored signal
    stays ignored. Outside the main thread nothing is installed."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received = 0
        self._raised = False
        self._shielded = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                previous = signal.getsignal(sig)
                if previous is not signal.SIG_IGN:
                    self._previous[sig] = previous
                    signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.received += 1
        if not self._shielded and not self._raised:
            self._raised = True
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def shield(self, raise_after: bool = True) -> Iterator[None]:
        self._shielded += 1
        try:
            yield
        finally:
            self._shielded -= 1
        if raise_after and not self._shielded and self.received and not self._raised:
            self._raised = True
            raise KeyboardInterrupt


def _silence_stdout() -> None:
    """After a broken pipe, point fd 1 at /dev/null so the interpreter's final flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run_stream(reference: str | Path, source_spec: str, opts: LiveOptions) -> StreamStats:
    """Stream until the source ends, the reader of stdout goes away, or SIGINT/SIGTERM arrives: after
    an interrupt no more model steps run, and the frames written so far are kept (the file is finalised)."""
    stats = StreamStats()
    with StopSignals() as stop:
        try:
            _stream(reference, source_spec, opts, stats, stop)
        except KeyboardInterrupt:
            pass
        stats.interrupted = stop.received > 0
    return stats


def _stream(reference: str | Path, source_spec: str, opts: LiveOptions, stats: StreamStats,
            stop: StopSignals) -> None:
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

    def quietly(fn, *args):
        with stop.shield(raise_after=False):
            fn(*args)

    with contextlib.ExitStack() as stack:
        # closed in reverse: the reader stops, the cropper closes, the output is finalised, the source closes
        source = open_source(source_spec, opts.input_format, opts.input_size, opts.input_fps, opts.realtime)
        buffer = None

        def close_source() -> None:
            if buffer is None and hasattr(source.frames, "close"):  # else the reader thread closes them
                source.frames.close()

        stack.callback(quietly, close_source)
        with stop.shield():  # ffmpeg is never left running without an owner
            sink = ffmpeg_sink(opts.to, source.fps) if opts.to else Sink(sys.stdout.buffer, opts.fmt, source.fps)

            def close_sink(exc_type, exc, tb) -> bool:
                if stats.closed or sink.closed:
                    return False
                # an interrupt is the end of the stream: what was written is kept; any other error discards it
                ok = exc_type is None or issubclass(exc_type, KeyboardInterrupt)
                with stop.shield(raise_after=False):
                    try:
                        sink.close(ok=ok)
                    except BrokenPipeError:
                        stats.closed = True
                        _silence_stdout()
                return False

            stack.push(close_sink)
        cropper = FaceCropper(opts.crop, opts.size)
        stack.callback(quietly, cropper.close)
        session = method.start(crop_reference(ref_image, opts.crop, opts.size))
        if source.live or source_spec == "-":
            # Keep at most two steps of input waiting: beyond that, waiting frames only add latency. stdin is
            # read on that thread even when not live (then nothing is dropped): a signal arriving inside PyAV's
            # read of a Python file is swallowed there, and would end the stream as a read error.
            buffer = LiveBuffer(source, capacity=2 * method.frames_per_step, drop=source.live,
                                pace=source.live and not source_spec.startswith("/dev/"))
            stack.callback(quietly, buffer.close)
            batches = iter(buffer)
        else:
            batches = ([f] for f in source.frames)

        def emit(frames):
            for out in frames:
                with stop.shield():
                    sink.write(out)
                    stats.written += 1

        try:
            for batch in batches:
                for frame in batch:
                    if buffer is None:
                        stats.received += 1
                    for cropped in cropper.crop(frame):
                        emit(session.push(cropped))
            for cropped in cropper.flush():
                emit(session.push(cropped))
            emit(session.flush())
        except BrokenPipeError:
            if sink.process is not None:
                # ffmpeg went away mid-stream (refused connection, full disk): that is an error, with its reason
                sink.close(ok=False)
                raise UserError(f"ffmpeg stopped reading the stream: {sink.ffmpeg_error() or 'no message'}") from None
            stats.closed = True
            _silence_stdout()
        finally:
            if buffer is not None:
                stats.received, stats.dropped = buffer.received, buffer.dropped
