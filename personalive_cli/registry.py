"""The Method interface and the plugin registry.

A method turns one reference portrait plus a stream of driving frames into a stream of output
frames::

    method = registry.get("personalive")(weights=..., device=..., dtype=...)
    session = method.start(reference_rgb)      # heavy per-reference work happens once here
    for chunk in driving_chunks:               # uint8 (n, h, w, 3), any n >= 1
        for out in session.push(chunk): ...    # outputs as soon as the method has them
    for out in session.flush(): ...            # drain what is still in flight

Built-in methods register with :func:`register`; third-party packages add one through the
``personalive.methods`` entry-point group (the entry point names a Method subclass).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np

from personalive_cli.errors import UserError

ENTRY_POINT_GROUP = "personalive.methods"


@dataclass
class MethodStatus:
    """What ``personalive methods`` shows for one method."""

    ready: bool
    detail: str
    needs: list[str] = field(default_factory=list)


class Session(abc.ABC):
    """One reference portrait being animated. Buffers input until it has a step's worth."""

    def __init__(self, frames_per_step: int):
        self.frames_per_step = frames_per_step
        self._pending: list[np.ndarray] = []

    def push(self, frames: np.ndarray) -> Iterator[np.ndarray]:
        """Feed driving frames, uint8 ``(n, h, w, 3)`` or ``(h, w, 3)``; yield output frames ``(H, W, 3)``."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        self._pending.extend(frames)
        while len(self._pending) >= self.frames_per_step:
            step = np.stack(self._pending[: self.frames_per_step])
            del self._pending[: self.frames_per_step]
            yield from self.step(step)

    def flush(self) -> Iterator[np.ndarray]:
        """Drain frames still in flight. The default pads a partial step by repeating its last frame
        and drops the outputs that belong to the padding."""
        if self._pending:
            n = len(self._pending)
            step = np.stack(self._pending + [self._pending[-1]] * (self.frames_per_step - n))
            self._pending = []
            outs = list(self.step(step))
            yield from outs[:n]
        yield from self.finish()

    @abc.abstractmethod
    def step(self, frames: np.ndarray) -> Iterator[np.ndarray]:
        """Process exactly ``frames_per_step`` driving frames."""

    def finish(self) -> Iterator[np.ndarray]:
        """Emit whatever a method with look-ahead still holds (nothing by default)."""
        return iter(())


class Method(abc.ABC):
    """A portrait-animation method behind the common interface."""

    name: str = ""
    frames_per_step: int = 1
    description: str = ""
    needs_weights: bool = False          # has --weights/--vae/--attention knobs (diffusion/GAN models)
    takes_driving_context: bool = False  # gets fps=, audio=, audio_start= options from `animate`
    downloads_to_cache: bool = False     # download_weights(None) fills a cache that status() searches
    weights_env: str | None = None       # environment variable naming its weights folder, if any

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", dtype=None, size: int = 512,
                 seed: int | None = None, **options):
        self.weights = weights
        self.device = device
        self.dtype = dtype
        self.size = size
        self.seed = seed
        self.options = options

    @classmethod
    def status(cls, weights: str | Path | None = None) -> MethodStatus:
        """Whether this method can run here, and what it needs if not."""
        return MethodStatus(ready=True, detail="ready")

    @classmethod
    def download_weights(cls, root: str | Path | None = None) -> None:
        """Fetch this method's weights: into ``root``, or (``None``) into the cache its
        :meth:`status` searches. Methods with downloadable weights override this."""
        raise UserError(f"method {cls.name!r} has no weights to download")

    @classmethod
    def check_size(cls, size: int) -> None:
        """Raise :class:`UserError` unless this method can work at ``size`` × ``size``.

        The default (multiples of 64 from 128 to 1024) is what a latent-diffusion UNet with three
        downsamplings needs; methods narrow it where they must."""
        if not (128 <= size <= 1024 and size % 64 == 0):
            raise UserError(f"unsupported --size {size} for method {cls.name!r}: "
                            "use a multiple of 64 from 128 to 1024 (e.g. 256 or 512)")

    @abc.abstractmethod
    def start(self, reference: np.ndarray) -> Session:
        """Begin a session for one reference portrait, uint8 ``(h, w, 3)``."""


_REGISTRY: dict[str, type[Method]] = {}
_loaded_entry_points = False


def register(name: str):
    """Class decorator: ``@register("still") class Still(Method): ...``."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_builtins() -> None:
    # Importing these modules runs their @register decorators.
    import personalive_cli.methods  # noqa: F401


def _load_entry_points() -> None:
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not a personalive Method subclass")
        register(ep.name)(cls)


def available() -> dict[str, type[Method]]:
    """Every registered method, built-in and from entry points, by name."""
    _load_builtins()
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[Method]:
    methods = available()
    if name not in methods:
        raise UserError(f"unknown method {name!r}; known methods: {', '.join(methods)}")
    return methods[name]
