"""Decoding and encoding video files with PyAV.

PyAV (FFmpeg) honours MP4 edit lists: the shared demo's header announces 1641 frames, but its edit
list trims 110 leading ones and 1531 are presented. We count presented frames from the demuxed
packets (skipping those flagged as discarded), which is exact and needs no decoding, and seek by
presentation timestamp so that random access returns the frames sequential decoding returns.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from personalive_cli.errors import UserError
from personalive_cli.io.outputs import check_output_file, temp_path, video_container


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction
    frames: int
    has_audio: bool

    @property
    def duration(self) -> float:
        return float(self.frames / self.fps) if self.fps else 0.0


def _open(path: Path, role: str):
    if not path.is_file():
        raise UserError(f"{role} not found: {path}")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise UserError(f"cannot read video {path}: {exc}") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{path} has no video stream")
    return container


class VideoReader:
    """Frames of a video file as uint8 RGB ``(h, w, 3)``, sequentially or by index."""

    def __init__(self, path: str | Path, role: str = "driving video"):
        self.path = Path(path)
        container = _open(self.path, role)
        try:
            stream = container.streams.video[0]
            has_audio = bool(container.streams.audio)
            pts = []
            last_duration = {}
            try:
                for packet in container.demux(stream):
                    if packet.size and not packet.is_discard and packet.pts is not None:
                        pts.append(packet.pts)
                        if packet.duration:
                            last_duration[packet.pts] = packet.duration
            except av.error.FFmpegError as exc:
                raise UserError(f"cannot read video {self.path}: {exc}") from None
            # Presentation order; B-frames make decode order differ.
            self._pts = sorted(pts)
            self._time_base = stream.time_base
            # how long the last frame is shown: the end of the video, which resampling must keep
            self._last_duration = last_duration.get(self._pts[-1]) if self._pts else None
            fps = stream.guessed_rate or stream.average_rate
            if not fps and len(self._pts) > 1:
                fps = Fraction(len(self._pts) - 1) / ((self._pts[-1] - self._pts[0]) * self._time_base)
            width, height = stream.codec_context.width, stream.codec_context.height
        finally:
            container.close()
        if not self._pts or not width or not height:
            raise UserError(f"{self.path} has no decodable video frames")
        self.info = VideoInfo(width=width, height=height, fps=Fraction(fps or 25), frames=len(self._pts),
                              has_audio=has_audio)
        self._container = None

    def __len__(self) -> int:
        return self.info.frames

    @property
    def first_frame_time(self) -> float:
        """Presentation time (s) of the first frame; audio is aligned to it."""
        return float(self._pts[0] * self._time_base)

    def frame_time(self, index: int) -> float:
        return float(self._pts[index] * self._time_base)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.iter_frames()

    def iter_frames(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Decode frames ``start .. stop-1`` in order."""
        stop = len(self) if stop is None else min(stop, len(self))
        if start >= stop:
            return
        container = av.open(str(self.path))
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if start > 0:
                container.seek(self._pts[start], stream=stream, backward=True)
            first_pts = self._pts[start]
            index = start
            try:
                for frame in container.decode(stream):
                    if frame.pts is None or frame.pts < first_pts:
                        continue
                    yield frame.to_ndarray(format="rgb24")
                    index += 1
                    if index >= stop:
                        return
            except av.error.FFmpegError as exc:
                raise UserError(f"decoding {self.path} failed at frame {index}: {exc}") from None
        finally:
            container.close()

    def iter_indices(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        """Decode sequentially, emitting each source frame as often as ``indices`` (non-decreasing)
        names it: the frames of a resampled plan (:meth:`output_plan`) without random access."""
        if not indices:
            return
        pos = 0
        for i, frame in enumerate(self.iter_frames(indices[0], indices[-1] + 1), start=indices[0]):
            while pos < len(indices) and indices[pos] == i:
                yield frame
                pos += 1

    def read(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Random access: the frames at ``indices`` (each seek lands on the exact presented frame)."""
        out = []
        for i in indices:
            if not 0 <= i < len(self):
                raise IndexError(f"frame {i} out of range 0..{len(self) - 1}")
            out.append(next(self.iter_frames(i, i + 1)))
        return out

    @property
    def constant_rate(self) -> bool:
        """Whether every frame is presented where the nominal frame rate puts it (within half a frame).
        A variable-frame-rate file (phone recordings, screen captures) is not."""
        fps = float(self.info.fps)
        t0 = self._pts[0]
        tb = float(self._time_base)
        return all(abs((p - t0) * tb * fps - k) <= 0.5 for k, p in enumerate(self._pts))

    @property
    def duration(self) -> Fraction:
        """Seconds from the first frame's presentation to the end of the last one."""
        last = self._last_duration * self._time_base if self._last_duration else 1 / self.info.fps
        return (self._pts[-1] - self._pts[0]) * self._time_base + last

    def output_plan(self, fps: Fraction | None = None, limit: int | None = None) -> tuple[Fraction, list[int]]:
        """The output frame rate and, per output frame, the source frame to use. With ``fps`` the video
        is resampled to it; without, a constant-rate video keeps its frames one for one and a
        variable-rate one is placed by its timestamps on a regular rate (:func:`regular_rate`), so
        the duration (and the sync with the audio) is kept either way."""
        if fps is None:
            if self.constant_rate:
                return self.info.fps, list(range(min(len(self), limit if limit is not None else len(self))))
            fps = regular_rate(self.info.fps)
        return fps, self.resampled_indices(fps, limit=limit)

    def resampled_indices(self, fps: Fraction, limit: int | None = None, start: int = 0,
                          stop: int | None = None) -> list[int]:
        """Source frame indices for an output at ``fps``: for output frame k (time k/fps from the first
        frame) the last source frame presented at or before that time. Exact rational maths, so a
        29.97 → 25 fps resample does not drift. With ``start``/``stop``, only source frames
        ``start .. stop-1`` (a trimmed segment, timed from frame ``start``) are resampled."""
        n = len(self._pts)
        stop = n if stop is None else min(stop, n)
        if not 0 <= start < stop:
            return []
        t0 = self._pts[start]
        # the segment ends where frame `stop` would be presented, or where the video ends
        if stop < n:
            end = (self._pts[stop] - t0) * self._time_base
        else:
            end = self.duration - (t0 - self._pts[0]) * self._time_base
        out = []
        j = start
        k = 0
        while True:
            t = Fraction(k) / fps
            if t >= end or (limit is not None and k >= limit):
                break
            while j + 1 < stop and (self._pts[j + 1] - t0) * self._time_base <= t:
                j += 1
            out.append(j)
            k += 1
        return out


STANDARD_RATES = (Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30),
                  Fraction(50), Fraction(60000, 1001), Fraction(60))


def regular_rate(nominal: Fraction) -> Fraction:
    """The output rate for a variable-rate video whose container announces ``nominal`` (often an
    average such as 11000/667): the standard rate within 1% of it, else it rounded to whole frames
    per second, at most 60."""
    for rate in STANDARD_RATES:
        if abs(nominal - rate) <= rate / 100:
            return rate
    return Fraction(min(60, max(1, round(nominal))))


class VideoWriter:
    """Video file writer: the container follows the extension (H.264 + AAC in .mp4/.mov/.mkv, VP9 + Opus
    in .webm). Frames go to a temporary file beside the target, which is renamed into
    place by :meth:`close`; :meth:`abort` (or an exception inside ``with``) deletes it, so no
    half-written file is ever left at the target path.

    With ``audio_from``, the audio of that file starting at ``audio_start`` seconds is re-encoded
    to AAC and cut to the video's duration, so it stays in sync whatever the frame count.
    """

    def __init__(self, path: str | Path, fps: Fraction | float, crf: int = 18, audio_from: str | Path | None = None,
                 audio_start: float = 0.0):
        self.path = check_output_file(path, inputs=[audio_from])
        self.muxer, self.video_codec, self.audio_codec = video_container(self.path)
        self.fps = Fraction(fps).limit_denominator(100000)
        self.crf = crf
        self.audio_from = Path(audio_from) if audio_from else None
        self.audio_start = audio_start
        self._tmp = temp_path(self.path)
        self._container = av.open(str(self._tmp), mode="w", format=self.muxer)
        self._stream = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if self._stream is None:
            h, w = frame.shape[:2]
            self._stream = self._container.add_stream(self.video_codec, rate=self.fps)
            self._stream.width, self._stream.height = w - w % 2, h - h % 2
            self._stream.pix_fmt = "yuv420p"
            if self.video_codec == "libx264":
                self._stream.options = {"crf": str(self.crf), "preset": "medium"}
            else:  # VP9: constant quality needs a zero bitrate target; the CRF scale is 0-63
                self._stream.options = {"crf": str(min(63, self.crf + 13)), "b": "0", "row-mt": "1",
                                        "deadline": "good", "cpu-used": "4"}
            self._stream.codec_context.time_base = 1 / self.fps
        vf = av.VideoFrame.from_ndarray(frame[: self._stream.height, : self._stream.width], format="rgb24")
        vf.pts = self.frames
        vf.time_base = 1 / self.fps
        self._container.mux(self._stream.encode(vf))
        self.frames += 1

    def close(self) -> Path:
        if self._stream is None:
            self.abort()
            raise UserError("no frames were produced; nothing written")
        self._container.mux(self._stream.encode(None))
        self._container.close()
        if self.audio_from is not None:
            try:
                self._mux_audio()
            except (av.error.FFmpegError, ValueError) as exc:
                self._tmp.unlink(missing_ok=True)
                raise UserError(f"could not add the audio of {self.audio_from}: {exc}") from None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - already failing; the temp file is removed below
            pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _mux_audio(self) -> None:
        """Rewrite the temp file with the driving audio added (video packets copied, not re-encoded)."""
        src = av.open(str(self.audio_from))
        if not src.streams.audio:
            src.close()
            return
        duration = float(self.frames / self.fps)
        video_in = av.open(str(self._tmp))
        muxed = temp_path(self.path, suffix=f".mux{self.path.suffix}")
        try:
            out = av.open(str(muxed), mode="w", format=self.muxer)
            v_in = video_in.streams.video[0]
            v_out = out.add_stream_from_template(v_in)
            a_in = src.streams.audio[0]
            # Opus (webm) runs at 48 kHz only; AAC keeps the source rate
            rate = 48000 if self.audio_codec == "libopus" else (a_in.codec_context.sample_rate or 48000)
            a_out = out.add_stream(self.audio_codec, rate=rate)
            a_out.layout = a_in.codec_context.layout.name if a_in.codec_context.layout else "stereo"
            for packet in video_in.demux(v_in):
                if packet.dts is None and packet.pts is None:  # the demuxer's empty flush packet
                    continue
                packet.stream = v_out
                out.mux(packet)
            resampler = av.AudioResampler(format=a_out.codec_context.format, layout=a_out.layout,
                                          rate=a_out.codec_context.sample_rate)
            rate = a_out.codec_context.sample_rate
            start = self.audio_start
            end = start + duration
            written = 0
            total = int(round(duration * rate))
            for frame in src.decode(a_in):
                if frame.time is None:
                    continue
                for rf in resampler.resample(frame):
                    t0 = float(rf.time) if rf.time is not None else start + written / rate
                    data = rf.to_ndarray()
                    first = max(0, int(round((start - t0) * rate)))
                    keep = min(data.shape[-1], total - written + first)
                    if first >= keep:
                        if t0 >= end:
                            break
                        continue
                    chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[..., first:keep]),
                                                       format=rf.format.name, layout=rf.layout.name)
                    chunk.sample_rate = rate
                    chunk.pts = written
                    chunk.time_base = Fraction(1, rate)
                    written += keep - first
                    out.mux(a_out.encode(chunk))
                if written >= total:
                    break
            out.mux(a_out.encode(None))
            out.close()
            os.chmod(muxed, os.stat(self._tmp).st_mode)
            os.replace(muxed, self._tmp)
        finally:
            video_in.close()
            src.close()
            muxed.unlink(missing_ok=True)
