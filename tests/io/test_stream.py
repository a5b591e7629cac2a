import io
import time
from fractions import Fraction

import av
import numpy as np

from personalive_cli.io.stream import LiveBuffer, Sink, Source


def test_y4m_sink_is_read_back_by_ffmpeg():
    buf = io.BytesIO()
    sink = Sink(buf, "y4m", Fraction(30000, 1001))
    frames = [np.full((32, 48, 3), (i * 40, 255 - i * 40, 128), np.uint8) for i in range(4)]
    for f in frames:
        sink.write(f)
    buf.seek(0)
    with av.open(buf, format="yuv4mpegpipe") as c:
        stream = c.streams.video[0]
        assert stream.guessed_rate == Fraction(30000, 1001)
        got = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    assert len(got) == 4 and got[0].shape == (32, 48, 3)
    assert all(np.abs(g.astype(int) - f).mean() < 3 for g, f in zip(got, frames, strict=True))


def test_live_buffer_drops_oldest_when_consumer_is_slow():
    frames = (np.full((2, 2, 3), i, np.uint8) for i in range(40))
    buffer = LiveBuffer(Source(frames, Fraction(200), live=True, name="t"), capacity=4, pace=True)
    consumed = []
    for batch in buffer:
        assert len(batch) <= 4
        consumed += [int(f[0, 0, 0]) for f in batch]
        time.sleep(0.05)  # a consumer ten times slower than the source
    assert buffer.received == 40
    assert buffer.dropped > 0
    assert len(consumed) + buffer.dropped == 40
    assert consumed == sorted(consumed) and consumed[-1] == 39  # newest frames survive, order kept


def test_live_buffer_keeps_everything_when_fast_enough():
    frames = (np.zeros((2, 2, 3), np.uint8) for _ in range(10))
    buffer = LiveBuffer(Source(frames, Fraction(1000), live=True, name="t"), capacity=4, pace=True)
    assert sum(len(b) for b in buffer) == 10 and buffer.dropped == 0
