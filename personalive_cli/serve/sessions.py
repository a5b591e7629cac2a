"""One Method session per viewer, paced live, with a limit on how many run at once.

Every viewer gets its own :class:`LiveSession`: a worker thread that takes the newest waiting camera frames
(at most two steps' worth wait; older ones are dropped, as ``stream``'s LiveBuffer does, so latency stays
bounded when the method falls behind), crops them, pushes them through the method's session and hands each
output back with the tag of the input frame it animates. Methods emit outputs in input order, one per
frame pushed, so a FIFO of the pushed frames' tags maps outputs to inputs; dropped frames are never pushed.

All sessions share one Method (its weights are loaded once) and one compute lock: the device runs one
step at a time, and ``max_sessions`` keeps extra viewers out rather than slowing everyone down."""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from personalive_cli.errors import UserError
from personalive_cli.faces.crop import CropConfig, crop_square, resize, square_around
from personalive_cli.registry import Method

log = logging.getLogger(__name__)


class Busy(UserError):
    """Every session slot is taken."""


@dataclass
class SessionStats:
    received: int = 0   # frames that reached the server
    dropped: int = 0    # dropped while waiting because the method was behind
    no_face: int = 0    # skipped before the first face was seen (crop auto)
    pushed: int = 0
    emitted: int = 0
    queue: int = 0      # frames waiting now

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class InputFrame:
    decode: Callable[[], tuple[np.ndarray | None, object]]  # → (rgb frame or None, tag); runs on the worker thread
    arrived: float = field(default_factory=time.monotonic)


class LiveCrop:
    """Driving frames → the method's size. ``auto`` follows the face smoothly (as ``stream``'s cropper),
    except that frames before the first face are skipped rather than held: a live viewer who steps out of
    view must not build up latency."""

    def __init__(self, mode: str, size: int):
        if mode not in ("auto", "none"):
            raise UserError(f"unknown crop mode {mode!r}; choose auto or none")
        self.size, self.config = size, CropConfig()
        self._detector = None
        if mode == "auto":
            from personalive_cli.faces.detector import FaceDetector

            self._detector = FaceDetector()
        self._state: tuple[float, float, float] | None = None

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        if self._detector is None:
            return resize(frame, self.size)
        box = self._detector.detect(frame)
        if box is not None:
            target = square_around(box, self.config.scale)
            a = self.config.smoothing if self._state is not None else 0.0
            self._state = target if self._state is None else tuple(
                a * p + (1 - a) * t for p, t in zip(self._state, target, strict=True))
        if self._state is None:
            return None
        return crop_square(frame, *self._state, self.size)

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()


OutputCallback = Callable[[np.ndarray, object, dict], None]
ErrorCallback = Callable[[str], None]


class LiveSession:
    """A viewer's session: :meth:`offer` camera frames from any thread, outputs arrive on ``on_output``
    (called on the worker thread with the frame, the tag of the input it animates and the stats)."""

    def __init__(self, manager: SessionManager, session_id: str, reference: np.ndarray, transport: str):
        self.manager, self.id, self.reference, self.transport = manager, session_id, reference, transport
        self.method = manager.method
        self.capacity = 2 * self.method.frames_per_step
        self.stats = SessionStats()
        self.on_output: OutputCallback = lambda frame, tag, stats: None
        self.on_error: ErrorCallback = lambda message: None
        self.connected = False
        self.created = time.monotonic()
        self._inbox: collections.deque[InputFrame] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._reset_seed: int | None = None
        self._thread: threading.Thread | None = None

    def start(self, on_output: OutputCallback, on_error: ErrorCallback) -> None:
        """Begin animating (the transport is connected)."""
        self.on_output, self.on_error = on_output, on_error
        self.connected = True
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"serve-session-{self.id[:6]}")
        self._thread.start()

    def offer(self, frame: InputFrame) -> None:
        """A camera frame arrived: queue it, dropping the oldest waiting frames beyond ``capacity``."""
        with self._cond:
            if self._closed:
                return
            self._inbox.append(frame)
            self.stats.received += 1
            while len(self._inbox) > self.capacity:
                self._inbox.popleft()
                self.stats.dropped += 1
            self.stats.queue = len(self._inbox)
            self._cond.notify()

    def reset(self, seed: int | None) -> None:
        """Start the method's session over (from the same portrait), with ``seed`` if given."""
        with self._cond:
            self._reset_seed = self.manager.seed if seed is None else seed
            self._inbox.clear()
            self._cond.notify()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the worker (it finishes the step it is in) and free the slot at once."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._inbox.clear()
            self._cond.notify_all()
        self.manager._forget(self)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10.0)

    def _next_batch(self) -> tuple[list[InputFrame], int | None]:
        with self._cond:
            while not self._inbox and not self._closed and self._reset_seed is None:
                self._cond.wait()
            batch = list(self._inbox)
            self._inbox.clear()
            self.stats.queue = 0
            seed, self._reset_seed = self._reset_seed, None
            return batch, seed

    def _run(self) -> None:
        cropper = None
        try:
            cropper = LiveCrop(self.manager.crop, self.method.size)
            session = self.manager.start_method_session(self.reference, self.manager.seed)
            tags: collections.deque = collections.deque()
            while not self._closed:
                batch, seed = self._next_batch()
                if seed is not None:
                    session = self.manager.start_method_session(self.reference, seed)
                    tags.clear()
                for item in batch:
                    if self._closed:
                        break
                    frame, tag = item.decode()
                    if frame is None:  # a frame that did not decode: skipped, not fatal
                        self.stats.dropped += 1
                        continue
                    cropped = cropper(frame)
                    if cropped is None:
                        self.stats.no_face += 1
                        continue
                    tags.append(tag)
                    self.stats.pushed += 1
                    with self.manager.compute_lock:
                        outputs = session.push(cropped)
                    for out in outputs:
                        self.stats.emitted += 1
                        self.on_output(out, tags.popleft(), self.stats.as_dict())
        except UserError as exc:
            self.on_error(str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the viewer and the log; the server keeps serving
            log.error("session %s failed: %s: %s", self.id[:6], type(exc).__name__, exc)
            self.on_error(f"the server failed animating this session ({type(exc).__name__}: {exc})")
        finally:
            if cropper is not None:
                cropper.close()


class SessionManager:
    """Hands out at most ``max_sessions`` sessions. A slot is taken when a viewer asks to start and freed
    when its connection closes; one reserved but never connected is freed after ``connect_timeout`` s."""

    def __init__(self, method: Method, max_sessions: int = 1, crop: str = "none", seed: int = 42,
                 connect_timeout: float = 15.0):
        if max_sessions < 1:
            raise UserError(f"--max-sessions must be at least 1, got {max_sessions}")
        self.method, self.max_sessions, self.crop, self.seed = method, max_sessions, crop, seed
        self.connect_timeout = connect_timeout
        self.compute_lock = threading.Lock()
        self._lock = threading.Lock()
        self._sessions: dict[str, LiveSession] = {}

    @property
    def active(self) -> int:
        self._expire()
        with self._lock:
            return len(self._sessions)

    def get(self, session_id: str) -> LiveSession | None:
        with self._lock:
            return self._sessions.get(session_id)

    def open(self, reference: np.ndarray, transport: str) -> LiveSession:
        """Reserve a slot for a viewer, or :class:`Busy`."""
        self._expire()
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise Busy(f"the server is busy: {len(self._sessions)} of {self.max_sessions} live "
                           f"session{'s' if self.max_sessions > 1 else ''} in use; try again when one ends")
            session = LiveSession(self, secrets.token_urlsafe(16), reference, transport)
            self._sessions[session.id] = session
            return session

    def start_method_session(self, reference: np.ndarray, seed: int):
        """The method's session for ``reference`` with ``seed``. Methods read their seed when a session
        starts; under the compute lock no other session starts meanwhile, so setting it here is safe."""
        with self.compute_lock:
            before = self.method.seed
            self.method.seed = seed
            try:
                return self.method.start(reference)
            finally:
                self.method.seed = before

    def close_all(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.close()

    def _forget(self, session: LiveSession) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            stale = [s for s in self._sessions.values()
                     if not s.connected and now - s.created > self.connect_timeout]
        for session in stale:
            session.close()
