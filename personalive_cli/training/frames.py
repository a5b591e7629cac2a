"""Random access to the frames of a training clip, with PyAV (the default) or decord (``decord2``).

A dataset sample opens its clip, reads the few frames it needs and closes it: no clip is held in
memory and nothing is opened before a DataLoader worker forks. Both backends decode on one thread,
since the DataLoader's workers are the parallelism.

``benchmarks/frame_access.py`` times the two on the demo videos (2 random frames, and 40 frames at
stride 4). They cost the same CPU time there, within the benchmark's noise, so the default is PyAV: a
core dependency, and exact on files with an MP4 edit list, which decord ignores (it counts the trimmed
frames too and returns other frames than sequential decoding). ``reader="decord"`` uses decord when
``decord2`` is installed.

Frame indices are presentation order. Clips written by ``personalive data prepare`` have no edit list;
for a file that has one, decord's frame count disagrees with the manifest and the dataset skips the
clip rather than pairing frames with the wrong boxes.
"""

from __future__ import annotations

import bisect
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

BACKENDS = ("decord", "pyav")
DEFAULT_BACKEND = "pyav"


def installed_backends() -> tuple[str, ...]:
    return tuple(b for b in BACKENDS if b != "decord" or importlib.util.find_spec("decord") is not None)
# PyAV: decode through up to this many frames rather than seek (a seek costs a decoder flush and may
# land a keyframe early, see PyAVFrames._decode_from)
SEEK_GAIN = 16


class CorruptVideo(Exception):
    """The clip cannot be opened or decoded; the dataset skips it (and reports it) instead of failing."""


class VideoFrames(ABC):
    """An open clip: ``len()`` frames, :meth:`read` some of them. Use as a context manager."""

    path: Path

    @abstractmethod
    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) -> uint8 RGB ``(n, h, w, 3)``."""
        indices = [int(i) for i in indices]
        n = len(self)
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise IndexError(f"frame {bad[0]} out of range 0..{n - 1} in {self.path}")
        wanted = sorted(set(indices))
        frames = dict(zip(wanted, self._read_sorted(wanted), strict=True))
        return np.stack([frames[i] for i in indices])

    @abstractmethod
    def _read_sorted(self, indices: list[int]) -> list[np.ndarray]:
        """Frames at strictly increasing ``indices``, all in range."""

    @abstractmethod
    def close(self) -> None:
        """Release the file (reading after it is an error)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DecordFrames(VideoFrames):
    """decord's ``VideoReader`` (it seeks to the keyframe before each wanted frame and decodes on)."""

    def __init__(self, path: str | Path):
        import decord

        self.path = Path(path)
        try:
            self._vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=1)
        except Exception as exc:  # noqa: BLE001 - decord raises bare RuntimeError/DECORDError for a bad file
            raise CorruptVideo(f"cannot open {self.path} with decord: {_first_line(exc)}") from None
        self._len = len(self._vr)

    def __len__(self) -> int:
        return self._len

    def _read_sorted(self, indices: list[int]) -> list[np.ndarray]:
        try:
            batch = self._vr.get_batch(indices).asnumpy()
        except Exception as exc:  # noqa: BLE001 - see __init__
            raise CorruptVideo(f"decoding {self.path} failed: {_first_line(exc)}") from None
        return list(batch)

    def close(self) -> None:
        self._vr = None


class PyAVFrames(VideoFrames):
    """PyAV: the packet index (demuxed, not decoded) maps frame index -> timestamp and keyframe; reading
    decodes forward from the last keyframe at or before each wanted frame, and keeps decoding instead of
    seeking when no keyframe lies between the decoder's position and the next wanted frame."""

    def __init__(self, path: str | Path):
        import av

        self.path = Path(path)
        self._av = av
        try:
            self._container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise CorruptVideo(f"cannot open {self.path}: {exc}") from None
        try:
            if not self._container.streams.video:
                raise CorruptVideo(f"{self.path} has no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.codec_context.thread_count = 1
            pts, keyframe_pts = [], []
            for packet in self._container.demux(self._stream):
                if not packet.size or packet.pts is None:
                    continue
                if not packet.is_discard:
                    pts.append(packet.pts)
                if packet.is_keyframe:  # discarded ones too: an edit list may trim the first keyframe
                    keyframe_pts.append(packet.pts)
        except self._av.error.FFmpegError as exc:
            self.close()
            raise CorruptVideo(f"cannot read {self.path}: {exc}") from None
        except CorruptVideo:
            self.close()
            raise
        self._pts = sorted(pts)  # presentation order (B-frames make decode order differ)
        self._index_of = {p: i for i, p in enumerate(self._pts)}
        # Where decoding can start, as the first frame index it presents: a keyframe presented before
        # the first kept frame (trimmed by an edit list) starts at frame 0, and so does the stream.
        self._keyframes = sorted({0} | {i for i in (bisect.bisect_left(self._pts, p) for p in keyframe_pts)
                                        if i < len(self._pts)})

    def __len__(self) -> int:
        return len(self._pts)

    def _keyframe_before(self, index: int) -> int:
        return self._keyframes[max(0, bisect.bisect_right(self._keyframes, index) - 1)]

    def _decode_from(self, target: int) -> Iterator[tuple[int, object]]:
        """Seek so that decoding starts at or before ``target``; yield (index, frame) in presentation order.

        A backward seek to a timestamp lands on a keyframe at or before it by the demuxer's index, which
        in MP4 with B-frames can be a few frames off the presentation timestamps: a seek just after a
        keyframe may land one keyframe early (only slower), or past the target (then we seek again from
        an earlier keyframe)."""
        earlier = [k for k in self._keyframes if k < target][::-1]
        for ts in [self._pts[target], *(self._pts[k] for k in earlier)]:
            self._container.seek(ts, stream=self._stream, backward=True)
            decoder = self._container.decode(self._stream)
            for frame in decoder:
                index = self._index_of.get(frame.pts) if frame.pts is not None else None
                if index is not None:
                    break
            else:
                continue
            if index <= target:
                yield index, frame
                for frame in decoder:
                    index = self._index_of.get(frame.pts) if frame.pts is not None else None
                    if index is not None:
                        yield index, frame
                return
        raise CorruptVideo(f"{self.path}: frame {target} cannot be reached by seeking")

    def _read_sorted(self, indices: list[int]) -> list[np.ndarray]:
        av = self._av
        out: list[np.ndarray] = []
        frames = None
        position = -1  # index of the last frame decoded
        try:
            for target in indices:
                # Seek only when it saves decoding SEEK_GAIN frames or more: a stride-4 window decodes
                # straight through, which also avoids the inexact landing of seeks just after a keyframe.
                far = self._keyframe_before(target) - position > SEEK_GAIN
                if frames is None or target <= position or far:
                    frames = self._decode_from(target)
                for position, frame in frames:
                    if position >= target:
                        if position != target:
                            raise CorruptVideo(f"{self.path}: frame {target} is missing from the stream")
                        out.append(frame.to_ndarray(format="rgb24"))
                        break
                else:
                    raise CorruptVideo(f"{self.path}: decoding ended before frame {target}")
        except av.error.FFmpegError as exc:
            raise CorruptVideo(f"decoding {self.path} failed: {exc}") from None
        return out

    def close(self) -> None:
        container, self._container = getattr(self, "_container", None), None
        if container is not None:
            container.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


FrameOpener = Callable[[Path], VideoFrames]


def frame_opener(backend: str | FrameOpener | None = None) -> FrameOpener:
    """``None`` (the default backend), ``"decord"``, ``"pyav"``, or a callable ``path -> VideoFrames``."""
    if backend is None:
        backend = DEFAULT_BACKEND
    if callable(backend):
        return backend
    if backend == "decord":
        if importlib.util.find_spec("decord") is None:
            from personalive_cli.errors import UserError

            raise UserError("the decord frame reader needs `pip install decord2` (or use the pyav reader)")
        return DecordFrames
    if backend == "pyav":
        return PyAVFrames
    from personalive_cli.errors import UserError

    raise UserError(f"unknown frame reader {backend!r} (use {' or '.join(BACKENDS)})")


def open_frames(path: str | Path, backend: str | FrameOpener | None = None) -> VideoFrames:
    return frame_opener(backend)(Path(path))
