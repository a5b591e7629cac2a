import io
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from helpers import process_alive

from personalive_cli.errors import UserError
from personalive_cli.io.stream import LiveBuffer, Sink, Source, ffmpeg_sink


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
    # 100 fps: a consumer 40 ms late (a loaded machine) still loses nothing
    buffer = LiveBuffer(Source(frames, Fraction(100), live=True, name="t"), capacity=4, pace=True)
    assert sum(len(b) for b in buffer) == 10 and buffer.dropped == 0


def test_buffer_without_drops_waits_for_a_slow_consumer():
    frames = (np.full((2, 2, 3), i, np.uint8) for i in range(30))
    buffer = LiveBuffer(Source(frames, Fraction(25), live=False, name="t"), capacity=4, pace=False, drop=False)
    consumed = []
    for batch in buffer:
        assert len(batch) <= 4
        consumed += [int(f[0, 0, 0]) for f in batch]
        time.sleep(0.01)
    assert consumed == list(range(30)) and buffer.dropped == 0

def test_live_buffer_close_stops_the_reader_and_closes_the_source():
    closed = []

    def frames():
        try:
            for i in range(1000):
                yield np.full((2, 2, 3), i % 256, np.uint8)
        finally:
            closed.append(True)

    buffer = LiveBuffer(Source(frames(), Fraction(50), live=True, name="t"), capacity=4, pace=True)
    batches = iter(buffer)
    assert next(batches)
    started = time.monotonic()
    buffer.close()
    assert time.monotonic() - started < 1
    assert not buffer._thread.is_alive() and closed == [True]
    assert list(batches) == [] and buffer.received < 1000


def _sink_process(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def test_sink_drains_the_stderr_of_its_process():
    # a process that writes far more than a pipe holds to stderr before reading its input: undrained, both stall
    proc = _sink_process("import sys\nfor _ in range(4000): sys.stderr.write('x' * 99 + '\\n')\n"
                         "sys.stderr.write('last words\\n'); sys.stderr.flush(); sys.stdin.buffer.read()")
    sink = Sink(proc.stdin, "y4m", Fraction(25), process=proc)
    for _ in range(20):
        sink.write(np.zeros((64, 64, 3), np.uint8))
    sink.close(timeout=10)
    assert proc.returncode == 0 and sink.ffmpeg_error() == "last words"


def _alive(pid: int) -> bool:
    return process_alive(pid)


def test_sink_kills_the_process_group_that_ignores_the_end_of_its_input(tmp_path):
    pid_file = tmp_path / "grandchild"
    # the process and a child of it both outlive their input: close waits, then kills the whole group
    proc = _sink_process("import subprocess, sys, time\n"
                         "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                         f"open({str(pid_file)!r}, 'w').write(str(child.pid))\ntime.sleep(60)")
    sink = Sink(proc.stdin, "y4m", Fraction(25), process=proc)
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        grandchild = int(pid_file.read_text())
        assert _alive(grandchild)
        started = time.monotonic()
        with pytest.raises(UserError, match="did not finish within 0.5 s"):
            sink.close(timeout=0.5)
        assert time.monotonic() - started < 5
        deadline = time.monotonic() + 5
        while _alive(grandchild):
            assert time.monotonic() < deadline, "the process's child survived"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_ffmpeg_sink_runs_in_its_own_session(tmp_path):
    sink = ffmpeg_sink(str(tmp_path / "o.mkv"), Fraction(25))
    try:
        assert os.getsid(sink.process.pid) == sink.process.pid != os.getsid(0)
        sink.write(np.zeros((32, 32, 3), np.uint8))
    finally:
        sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mkv"]
