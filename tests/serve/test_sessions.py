import threading
import time

import numpy as np
import pytest

from personalive_cli.registry import Method, Session
from personalive_cli.serve.sessions import Busy, InputFrame, LiveCrop, SessionManager


class _SlowSession(Session):
    """Outputs each driving frame's first pixel value after ``delay`` s per step of ``frames_per_step``."""

    def __init__(self, n, delay, seed):
        super().__init__(frames_per_step=n)
        self.delay, self.seed = delay, seed

    def step(self, frames):
        time.sleep(self.delay)
        for f in frames:
            yield np.full((8, 8, 3), f[0, 0, 0], np.uint8)


class _Slow(Method):
    uses_torch = False

    def __init__(self, n=1, delay=0.0):
        super().__init__(size=8, seed=42)
        self.frames_per_step, self.delay, self.seeds = n, delay, []

    def start(self, reference):
        self.seeds.append(self.seed)
        return _SlowSession(self.frames_per_step, self.delay, self.seed)


def _frame(value: int) -> InputFrame:
    return InputFrame(decode=lambda: (np.full((8, 8, 3), value, np.uint8), value))


def _collect(session):
    got, done = [], threading.Event()

    def on_output(frame, tag, stats):
        assert frame[0, 0, 0] == tag  # the output animates exactly the input its tag names
        got.append(tag)

    session.start(on_output, lambda message: done.set())
    return got


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_slots_are_limited_and_freed_on_close():
    manager = SessionManager(_Slow(), max_sessions=2)
    ref = np.zeros((8, 8, 3), np.uint8)
    a, b = manager.open(ref, "websocket"), manager.open(ref, "websocket")
    with pytest.raises(Busy, match="2 of 2"):
        manager.open(ref, "websocket")
    a.close()
    assert manager.active == 1 and manager.get(a.id) is None
    manager.open(ref, "webrtc")
    b.close()
    manager.close_all()
    assert manager.active == 0


def test_a_slot_reserved_but_never_connected_expires():
    manager = SessionManager(_Slow(), max_sessions=1, connect_timeout=0.05)
    manager.open(np.zeros((8, 8, 3), np.uint8), "websocket")
    time.sleep(0.1)
    assert manager.active == 0
    manager.open(np.zeros((8, 8, 3), np.uint8), "websocket").close()


@pytest.mark.parametrize("per_step", [1, 4])
def test_outputs_come_back_in_order_with_the_tag_of_the_frame_they_animate(per_step):
    manager = SessionManager(_Slow(n=per_step), max_sessions=1)
    session = manager.open(np.zeros((8, 8, 3), np.uint8), "websocket")
    got = _collect(session)
    for i in range(12):
        session.offer(_frame(i))
        time.sleep(0.005)
    _wait(lambda: len(got) == 12)
    assert got == list(range(12))
    session.close()
    assert manager.active == 0 and not session._thread.is_alive()


def test_a_slow_method_drops_the_oldest_waiting_frames_and_latency_stays_bounded():
    manager = SessionManager(_Slow(n=1, delay=0.05), max_sessions=1)
    session = manager.open(np.zeros((8, 8, 3), np.uint8), "websocket")
    got = _collect(session)
    for i in range(60):  # 5 ms apart: ten times faster than the method
        session.offer(_frame(i))
        assert session.stats.queue <= session.capacity
        time.sleep(0.005)
    _wait(lambda: got and got[-1] == 59)
    assert session.stats.dropped > 30 and session.stats.dropped + len(got) == 60
    assert got == sorted(got)  # dropped frames are never pushed, so the mapping stays in order
    session.close()


def test_reset_starts_the_method_over_with_the_seed_given():
    method = _Slow()
    manager = SessionManager(method, max_sessions=1, seed=7)
    session = manager.open(np.zeros((8, 8, 3), np.uint8), "websocket")
    got = _collect(session)
    session.offer(_frame(1))
    _wait(lambda: got == [1])
    session.reset(123)
    session.offer(_frame(2))
    _wait(lambda: got == [1, 2])
    assert method.seeds == [7, 123] and method.seed == 42  # the method's own seed is left as it was
    session.close()


def test_a_frame_that_does_not_decode_is_skipped_not_fatal():
    manager = SessionManager(_Slow(), max_sessions=1)
    session = manager.open(np.zeros((8, 8, 3), np.uint8), "websocket")
    got = _collect(session)
    session.offer(InputFrame(decode=lambda: (None, 0)))
    session.offer(_frame(5))
    _wait(lambda: got == [5])
    assert session.stats.dropped == 1
    session.close()


def test_a_failing_method_reports_to_the_viewer():
    class Broken(_Slow):
        def start(self, reference):
            raise RuntimeError("out of memory")

    manager = SessionManager(Broken(), max_sessions=1)
    session = manager.open(np.zeros((8, 8, 3), np.uint8), "websocket")
    errors = []
    session.start(lambda *a: None, errors.append)
    _wait(lambda: errors)
    assert "out of memory" in errors[0]
    session.close()


def test_live_crop_none_resizes_whole_frames():
    crop = LiveCrop("none", 32)
    assert crop(np.zeros((48, 64, 3), np.uint8)).shape == (32, 32, 3)
    with pytest.raises(Exception, match="unknown crop mode"):
        LiveCrop("sideways", 32)
