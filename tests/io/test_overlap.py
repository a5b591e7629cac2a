"""The reader and writer threads of `animate`: order kept, errors raised in the caller, nothing left running."""

import threading
import time

import pytest

from personalive_cli.io.overlap import WriteBehind, read_ahead


def test_read_ahead_keeps_order_and_runs_ahead():
    produced = []

    def source():
        for i in range(50):
            produced.append(i)
            yield i

    it = read_ahead(source(), depth=4)
    assert next(it) == 0
    time.sleep(0.2)
    assert 2 <= len(produced) <= 7  # ahead of the consumer, but no further than the queue allows
    assert list(it) == list(range(1, 50))


def test_read_ahead_raises_the_workers_error_and_stops_when_closed():
    def failing():
        yield 1
        raise ValueError("corrupt frame")

    it = read_ahead(failing())
    assert next(it) == 1
    with pytest.raises(ValueError, match="corrupt frame"):
        next(it)
    before = threading.active_count()
    endless = read_ahead(iter(int, 1), depth=2)  # never ends by itself
    next(endless)
    endless.close()
    assert threading.active_count() <= before


def test_write_behind_writes_everything_in_order_and_reports_errors():
    written = []
    behind = WriteBehind(written.append, depth=3)
    for i in range(20):
        behind.put(i)
    behind.finish()
    assert written == list(range(20))

    def broken(item):
        raise OSError("disk full")

    behind = WriteBehind(broken)
    behind.put(1)
    with pytest.raises(OSError, match="disk full"):
        behind.finish()
    cancelled = WriteBehind(lambda item: time.sleep(0.05), depth=2)
    for i in range(3):
        cancelled.put(i)
    cancelled.cancel()  # drops what is queued, returns promptly
    assert not cancelled._worker.is_alive()
