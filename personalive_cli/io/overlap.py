"""Video decode and encode beside the model: a reader thread ahead of the consumer, a writer thread behind
the producer, each with a bounded queue. PyAV and mediapipe release the GIL while they work, so on a
GPU the model never waits for either; on a CPU they share the cores with it (benchmarks/README.md).

Errors in a thread are raised in the caller at its next call; the threads never outlive their owner.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def read_ahead(items: Iterable[Any], depth: int = 16) -> Iterator[Any]:
    """Iterate ``items`` in a worker thread, at most ``depth`` items ahead of the caller. Closing the
    returned generator (or an exception in the caller) stops the worker."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            put(_Failure(exc))

    worker = threading.Thread(target=work, name="read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


class WriteBehind:
    """Call ``write(item)`` in a worker thread, at most ``depth`` items behind the caller.

    :meth:`put` hands an item over (blocking while the queue is full; raises the worker's error if it
    failed); :meth:`finish` waits until everything is written and raises the worker's error, if any;
    :meth:`cancel` drops what is still queued and stops the worker.
    """

    def __init__(self, write: Callable[[Any], None], depth: int = 16):
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        self._worker = threading.Thread(target=self._work, name="write-behind", daemon=True)
        self._worker.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE or self._cancelled.is_set():
                return
            if self._error is None:
                try:
                    self._write(item)
                except BaseException as exc:  # noqa: BLE001 - raised in the caller
                    self._error = exc

    def put(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def finish(self) -> None:
        self._queue.put(_DONE)
        self._worker.join()
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        self._cancelled.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._queue.put(_DONE)
        self._worker.join(timeout=5)
