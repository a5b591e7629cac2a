"""Live driving sources (file, V4L2 webcam, stdin) and frame sinks (y4m / rgb24 / ffmpeg)."""

from __future__ import annotations

import collections
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from personalive_cli.errors import UserError
from personalive_cli.io.ffmpeg import find_ffmpeg
from personalive_cli.io.outputs import check_output_file, temp_path, video_container
from personalive_cli.io.video import VideoReader


class Source:
    """Driving frames as uint8 RGB ``(h, w, 3)``. ``live`` sources are paced by the outside world."""

    def __init__(self, frames: Iterator[np.ndarray], fps: Fraction, live: bool, name: str):
        self.frames, self.fps, self.live, self.name = frames, fps, live, name


def _pyav_frames(container, name: str) -> Iterator[np.ndarray]:
    try:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as exc:
        raise UserError(f"reading {name} failed: {exc}") from None
    finally:
        container.close()


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        return w, h
    except ValueError:
        raise UserError(f"--input-size must look like 512x512, got {text!r}") from None


def _stdin_reader() -> BinaryIO:
    """A reader of its own on fd 0 (when nothing was read through ``sys.stdin`` yet): the source may be
    read on a thread that is still blocked in a read when the interpreter exits, and exiting Python
    must take the lock of ``sys.stdin.buffer`` (with it busy, it aborts), not of this one."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return sys.stdin.buffer
    return io.BufferedReader(io.FileIO(fd, "rb", closefd=False))


def open_source(spec: str, input_format: str = "auto", input_size: str | None = None,
                input_fps: float = 25.0, realtime: bool | None = None) -> Source:
    """``-`` (stdin: y4m, detected by its magic, or raw rgb24 with ``input_size``), a V4L2 device
    (``/dev/video0``) or a video file. ``realtime`` None: only webcams are live."""
    if spec == "-":
        stdin: BinaryIO = _stdin_reader()
        head = stdin.peek(9)[:9] if hasattr(stdin, "peek") else b""
        fmt = input_format
        if fmt == "auto":
            fmt = "y4m" if head.startswith(b"YUV4MPEG2") else "rgb24"
        if fmt == "y4m":
            if not head:
                raise UserError("no data on stdin")
            try:
                container = av.open(stdin, format="yuv4mpegpipe")
            except av.error.FFmpegError as exc:
                raise UserError(f"stdin is not a y4m stream: {exc}") from None
        elif fmt == "rgb24":
            if not input_size:
                raise UserError("raw rgb24 on stdin needs --input-size WxH (or send y4m: ffmpeg ... -f yuv4mpegpipe -)")
            w, h = _parse_size(input_size)
            if w <= 0 or h <= 0 or input_fps <= 0:
                raise UserError("--input-size and --input-fps must be positive")
            try:
                container = av.open(stdin, format="rawvideo", options={
                    "video_size": f"{w}x{h}", "pixel_format": "rgb24", "framerate": str(input_fps)})
            except av.error.FFmpegError as exc:
                raise UserError(f"cannot read raw rgb24 from stdin: {exc}") from None
        else:
            raise UserError(f"unknown --input-format {input_format!r}; choose auto, y4m or rgb24")
        fps = container.streams.video[0].guessed_rate or Fraction(input_fps)
        return Source(_pyav_frames(container, "stdin"), Fraction(fps), bool(realtime), "stdin")
    if spec.startswith("/dev/video"):
        if not Path(spec).exists():
            raise UserError(f"webcam {spec} not found")
        try:
            container = av.open(spec, format="v4l2")
        except av.error.FFmpegError as exc:
            raise UserError(f"cannot open webcam {spec}: {exc}") from None
        fps = container.streams.video[0].guessed_rate or Fraction(30)
        return Source(_pyav_frames(container, spec), Fraction(fps), realtime is not False, spec)
    reader = VideoReader(spec)
    fps, indices = reader.output_plan()  # a variable-rate file is placed on its nominal rate by timestamps
    return Source(reader.iter_indices(indices), fps, bool(realtime), spec)


class LiveBuffer:
    """Reads a source on a thread, paced to its fps, keeping at most ``capacity`` frames: when the
    consumer falls behind, the oldest frames are dropped (and counted) so latency stays bounded; with
    ``drop=False`` the reader waits for room instead (a source that is not live, read off the main
    thread). :meth:`close` stops the reader (and closes the source's frames, with them its container)."""

    def __init__(self, source: Source, capacity: int, pace: bool, drop: bool = True):
        self.capacity = capacity
        self.drop = drop
        self.dropped = 0
        self.received = 0
        self.error: BaseException | None = None
        self._frames: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source, pace), daemon=True, name="live-reader")
        self._thread.start()

    def _run(self, source: Source, pace: bool) -> None:
        start = time.monotonic()
        try:
            for i, frame in enumerate(source.frames):
                if pace:
                    delay = start + float(i / source.fps) - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                if self._stop.is_set():
                    break
                with self._cond:
                    while not self.drop and len(self._frames) >= self.capacity and not self._stop.is_set():
                        self._cond.wait()
                    self._frames.append(frame)
                    self.received += 1
                    while len(self._frames) > self.capacity:
                        self._frames.popleft()
                        self.dropped += 1
                    self._cond.notify()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            self.error = exc
        finally:
            close = getattr(source.frames, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - a source failing to close must not hide the stream's end
                    pass
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def close(self, timeout: float = 2.0) -> None:
        """Stop reading: the thread ends after the frame it is reading (a blocked stdin may outlive
        ``timeout``; the thread is a daemon). Waiting frames are discarded."""
        self._stop.set()
        with self._cond:
            self._frames.clear()
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        """Batches of the frames available now (at least one), until the source ends or :meth:`close`."""
        while True:
            with self._cond:
                while not self._frames and not self._done and not self._stop.is_set():
                    self._cond.wait()
                batch = list(self._frames)
                self._frames.clear()
                self._cond.notify_all()  # room for a reader that waits instead of dropping
                done = self._done or self._stop.is_set()
            if batch:
                yield batch
            if done and not batch:
                if self.error is not None and not self._stop.is_set():
                    raise self.error
                return


class Sink:
    """Where output frames go: ``y4m`` or ``rgb24`` bytes on a binary stream, or an ffmpeg process
    (started in its own process group; its stderr is drained on a thread, the last lines kept)."""

    def __init__(self, out: BinaryIO, fmt: str, fps: Fraction, process: subprocess.Popen | None = None,
                 finalize: tuple[Path, Path] | None = None):
        if fmt not in ("y4m", "rgb24"):
            raise UserError(f"unknown --format {fmt!r}; choose y4m or rgb24")
        self.out, self.fmt, self.fps, self.process, self.finalize = out, fmt, fps, process, finalize
        self._header_written = False
        self.frames = 0
        self.closed = False
        self._stderr_lines: collections.deque[str] = collections.deque(maxlen=20)
        self._stderr_thread: threading.Thread | None = None
        if process is not None and process.stderr is not None:
            self._stderr_thread = threading.Thread(target=self._drain, args=(process.stderr,), daemon=True,
                                                   name="ffmpeg-stderr")
            self._stderr_thread.start()

    def _drain(self, pipe: BinaryIO) -> None:
        """Read ffmpeg's stderr as it comes: a full pipe would stall ffmpeg, and with it the stream."""
        try:
            for line in pipe:
                text = line.decode(errors="replace").strip()
                if text:
                    self._stderr_lines.append(text)
        except (OSError, ValueError):
            pass
        finally:
            try:
                pipe.close()
            except OSError:
                pass

    def write(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if self.fmt == "rgb24":
            self.out.write(frame.tobytes())
        else:
            h, w = frame.shape[:2]
            if not self._header_written:
                fps = Fraction(self.fps).limit_denominator(1001000)
                self.out.write(f"YUV4MPEG2 W{w} H{h} F{fps.numerator}:{fps.denominator} Ip A1:1 C420jpeg\n".encode())
                self._header_written = True
            yuv = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p").to_ndarray()
            self.out.write(b"FRAME\n" + yuv.tobytes())
        self.frames += 1

    def ffmpeg_error(self) -> str:
        """ffmpeg's last stderr line (complete once it has exited and :meth:`close` ran)."""
        return self._stderr_lines[-1] if self._stderr_lines else ""

    def kill(self) -> None:
        """Kill ffmpeg's whole process group (it runs in its own session), if it is still running."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self, ok: bool = True, timeout: float = 10.0) -> None:
        """Flush; for ffmpeg: end its input, wait for it (``timeout`` s, then its group is killed) and move
        the file into place when it succeeded with at least one frame (else the temporary file is removed).
        ``ok=False`` (the stream failed): ffmpeg is killed at once and nothing is kept."""
        if self.closed:
            return
        self.closed = True
        try:
            self.out.flush()
        except (BrokenPipeError, ValueError):
            pass
        if self.process is None:
            return
        try:
            self.out.close()
        except (BrokenPipeError, ValueError):
            pass
        if not ok:
            self.kill()
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.wait()
            self._stderr_lines.append(f"did not finish within {timeout:g} s of the end of its input")
        if self._stderr_thread is not None:
            self._stderr_thread.join(2.0)
        if self.finalize is not None:
            tmp, final = self.finalize
            if ok and code == 0 and self.frames:
                os.replace(tmp, final)
            else:
                tmp.unlink(missing_ok=True)
        if code != 0 and ok:
            raise UserError(f"ffmpeg failed (exit {code}): {self.ffmpeg_error() or 'no message'}")


def is_file_target(url: str) -> bool:
    """Whether ``--to`` names a file (rather than a URL or a v4l2loopback device)."""
    return not url.startswith("/dev/video") and "://" not in url


def ffmpeg_sink(url: str, fps: Fraction) -> Sink:
    """Pipe y4m into ``ffmpeg`` writing ``url``: a file (written to a temporary name, renamed when
    ffmpeg succeeds), an RTMP/RTSP/SRT URL, or a v4l2loopback device."""
    ffmpeg = find_ffmpeg()
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "yuv4mpegpipe", "-i", "-"]
    finalize = None
    target = url
    if url.startswith("/dev/video"):
        cmd += ["-f", "v4l2", "-pix_fmt", "yuv420p"]
    elif "://" in url:
        scheme = url.split("://", 1)[0]
        fmt = {"rtmp": "flv", "rtmps": "flv", "rtsp": "rtsp", "srt": "mpegts", "udp": "mpegts"}.get(scheme)
        cmd += ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-pix_fmt", "yuv420p"]
        if fmt:
            cmd += ["-f", fmt]
    else:
        final = check_output_file(url)
        muxer, codec, _ = video_container(final)
        tmp = temp_path(final)
        finalize, target = (tmp, final), str(tmp)
        cmd += ["-c:v", codec, "-crf", "18", "-pix_fmt", "yuv420p", "-f", muxer]
        if codec == "libvpx-vp9":
            cmd += ["-b:v", "0", "-row-mt", "1", "-deadline", "realtime", "-cpu-used", "8"]
    cmd.append(target)
    try:
        # its own session: a Ctrl-C sent to the terminal's process group must not stop ffmpeg before it has
        # finalised the file; the stream ends it by closing its input (and kills its group on failure)
        process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
    except OSError as exc:
        if finalize is not None:
            finalize[0].unlink(missing_ok=True)
        raise UserError(f"cannot start ffmpeg ({exc})") from None
    return Sink(process.stdin, "y4m", fps, process=process, finalize=finalize)
