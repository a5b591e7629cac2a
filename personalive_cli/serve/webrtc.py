"""WebRTC transport (aiortc): the camera arrives as a video track, the animation leaves as another, and
a data channel carries control messages (reset) and the session's figures.

Frame ids travel in the pixels (see framestamp): the page draws each camera frame's id under it, and every
output frame carries the id of the camera frame it animates, so the page computes glass-to-glass latency
against its own capture clock with no clock shared with the server."""

from __future__ import annotations

import asyncio
import fractions
import json
import logging
import time

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from personalive_cli.serve.framestamp import STRIP, add_strip, read_strip
from personalive_cli.serve.latest import LatestQueue
from personalive_cli.serve.sessions import InputFrame, LiveSession

log = logging.getLogger(__name__)
VIDEO_CLOCK = 90000  # RTP's video clock rate


class AnimationTrack(MediaStreamTrack):
    """The outgoing video: the newest output frames, timestamped when they were produced."""

    kind = "video"

    def __init__(self):
        super().__init__()
        self.queue = LatestQueue(capacity=2)
        self._start = time.monotonic()

    async def recv(self) -> av.VideoFrame:
        frame = await self.queue.get()
        frame.pts = int((time.monotonic() - self._start) * VIDEO_CLOCK)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


def _decode(frame: av.VideoFrame) -> tuple[np.ndarray, int | None]:
    rgb = frame.to_ndarray(format="rgb24")
    if rgb.shape[0] <= 2 * STRIP:
        return rgb, None
    return read_strip(rgb)


class WebRTCPeer:
    """One viewer's peer connection bound to its :class:`LiveSession`; closing either closes both."""

    def __init__(self, session: LiveSession, on_closed):
        self.session = session
        self.pc = RTCPeerConnection()
        self.track = AnimationTrack()
        self.channel = None
        self.loop = asyncio.get_running_loop()
        self._on_closed = on_closed
        self._closing = False
        self._reader: asyncio.Task | None = None

        @self.pc.on("track")
        def on_track(track):
            if track.kind == "video" and self._reader is None:
                self._reader = asyncio.ensure_future(self._read(track))

        @self.pc.on("datachannel")
        def on_datachannel(channel):
            self.channel = channel

            @channel.on("message")
            def on_message(message):
                self._control(message)

            @channel.on("close")
            def on_close():
                asyncio.ensure_future(self.close())

        @self.pc.on("connectionstatechange")
        async def on_state():
            if self.pc.connectionState in ("failed", "closed", "disconnected"):
                await self.close()

    async def answer(self, sdp: str, kind: str) -> RTCSessionDescription:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        if not any(t.kind == "video" for t in self.pc.getTransceivers()):
            raise ValueError("the offer has no video")
        self.pc.addTrack(self.track)  # takes the offer's video transceiver: one sendrecv m-line
        self.session.start(self._output, self._error)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription

    async def _read(self, track) -> None:
        """Take every incoming frame off the track at once (aiortc queues them without bound otherwise);
        the session's inbox does the dropping."""
        while not self._closing:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            self.session.offer(InputFrame(decode=lambda frame=frame: _decode(frame)))
        await self.close()

    def _output(self, frame: np.ndarray, tag, stats: dict) -> None:
        """Worker thread: stamp the id of the frame this animates, hand the frame to the event loop."""
        video = av.VideoFrame.from_ndarray(add_strip(frame, tag) if tag is not None else
                                           np.concatenate([frame, np.zeros((STRIP, *frame.shape[1:]), np.uint8)]),
                                           format="rgb24")
        stats = {**stats, "send_dropped": self.track.queue.dropped}
        self.loop.call_soon_threadsafe(self._deliver, video, stats)

    def _deliver(self, video: av.VideoFrame, stats: dict) -> None:
        self.track.queue.put(video)
        self._send({"type": "stats", **stats})

    def _error(self, message: str) -> None:
        self.loop.call_soon_threadsafe(self._send, {"type": "error", "message": message})

    def _send(self, message: dict) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps(message))

    def _control(self, message) -> None:
        try:
            data = json.loads(message)
        except (TypeError, ValueError):
            return
        if isinstance(data, dict) and data.get("type") == "reset":
            seed = data.get("seed")
            self.session.reset(seed if isinstance(seed, int) else None)

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        await asyncio.get_running_loop().run_in_executor(None, self.session.close)
        await self.pc.close()
        self._on_closed(self)
