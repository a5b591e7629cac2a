"""The Method interface and the plugin registry.

A method turns one reference portrait plus a stream of driving frames into a stream of output
frames::

    method = registry.get("personalive")(weights=..., device=..., dtype=...)
    session = method.start(reference_rgb)      # heavy per-reference work happens once here
    for chunk in driving_chunks:               # uint8 (n, h, w, 3), any n >= 1
        for out in session.push(chunk): ...    # outputs as soon as the method has them
    for out in session.flush(): ...            # drain what is still in flight

Every method, built-in or third-party, registers through the ``personalive.methods`` entry-point
group (the entry point names a Method subclass; this package declares its own in pyproject.toml).
:func:`register` adds one programmatically.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np

from personalive_cli.errors import UserError

ENTRY_POINT_GROUP = "personalive.methods"
log = logging.getLogger(__name__)


@dataclass
class MethodStatus:
    """What ``personalive methods`` shows for one method."""

    ready: bool
    detail: str
    needs: list[str] = field(default_factory=list)


def as_frames(frames, size: int | None = None) -> np.ndarray:
    """Driving frames as uint8 RGB ``(n, h, w, 3)``, converted at the edge where that is lossless in
    meaning (greyscale → RGB, RGBA → RGB by dropping alpha), refused with one clear error otherwise
    (another dtype, another channel count, another size than the session was started for)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise UserError(f"driving frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim == 2:                          # one greyscale frame (h, w)
        frames = frames[None, ..., None]
    elif frames.ndim == 3 and frames.shape[-1] not in (1, 3, 4):  # greyscale frames (n, h, w)
        frames = frames[..., None]
    elif frames.ndim == 3:                        # one frame (h, w, c)
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise UserError(f"driving frames must be (n, h, w, 3) or (h, w, 3) uint8 RGB, got shape {frames.shape}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    elif frames.shape[-1] == 4:
        frames = frames[..., :3]
    if size is not None and frames.shape[1:3] != (size, size):
        raise UserError(f"driving frames must be {size}×{size} (the size this session was started for), "
                        f"got {frames.shape[2]}×{frames.shape[1]}")
    return np.ascontiguousarray(frames)


class Session(abc.ABC):
    """One reference portrait being animated. Buffers input until it has a step's worth.

    :meth:`push` and :meth:`flush` are eager: they do the work when called and return the output
    frames as a list, so a caller that ignores the result loses nothing it has not seen."""

    def __init__(self, frames_per_step: int, size: int | None = None):
        self.frames_per_step = frames_per_step
        self.size = size
        self._pending: list[np.ndarray] = []

    def push(self, frames) -> list[np.ndarray]:
        """Feed driving frames, uint8 ``(n, h, w, 3)`` or ``(h, w, 3)`` (greyscale and RGBA are
        converted); return the output frames ``(H, W, 3)`` ready now."""
        frames = as_frames(frames, self.size)
        self._pending.extend(frames)
        out: list[np.ndarray] = []
        while len(self._pending) >= self.frames_per_step:
            step = np.stack(self._pending[: self.frames_per_step])
            del self._pending[: self.frames_per_step]
            out.extend(self.step(step))
        return out

    def flush(self) -> list[np.ndarray]:
        """Drain frames still in flight. The default pads a partial step by repeating its last frame
        and drops the outputs that belong to the padding."""
        out: list[np.ndarray] = []
        if self._pending:
            n = len(self._pending)
            step = np.stack(self._pending + [self._pending[-1]] * (self.frames_per_step - n))
            self._pending = []
            out.extend(list(self.step(step))[:n])
        out.extend(self.finish())
        return out

    @abc.abstractmethod
    def step(self, frames: np.ndarray) -> Iterator[np.ndarray]:
        """Process exactly ``frames_per_step`` driving frames."""

    def finish(self) -> Iterator[np.ndarray]:
        """Emit whatever a method with look-ahead still holds (nothing by default)."""
        return iter(())


@dataclass
class NoOptions:
    """A method without ``--option`` settings."""


def option(default, help: str):  # noqa: A002 - the word the CLI shows
    """A field of a method's options dataclass, with the help text ``personalive methods info`` shows."""
    return field(default=default, metadata={"help": help})


class Method(abc.ABC):
    """A portrait-animation method behind the common interface.

    What a method is, declared as class attributes that commands read (no command names a method):

    - ``Options``: a dataclass of what ``--option KEY=VALUE`` accepts (fields made with :func:`option`);
      the constructor receives them as keyword arguments.
    - ``streamable`` (emits frames as driving frames arrive: ``stream`` works) and ``clip_based`` (needs
      the whole clip before producing anything).
    - ``model_flags``: which of the model flags ``--vae`` / ``--attention`` it takes.
    - weights hooks: :meth:`status`, :meth:`check_weights`, :meth:`download_weights`, :meth:`make_tiny_weights`
      (``has_weights`` says whether it has any; ``downloads_to_cache`` whether ``download_weights(None)``
      fills a cache :meth:`status` searches).
    """

    name: str = ""
    description: str = ""
    frames_per_step: int = 1
    Options: type = NoOptions
    streamable: bool = True
    clip_based: bool = False
    model_flags: frozenset[str] = frozenset()
    uses_torch: bool = True               # False: runs no torch code, so the CLI need not import torch for it
    can_use_random_weights: bool = False  # the bench may build it with random weights (same architecture)
    takes_driving_context: bool = False   # gets fps=, audio=, audio_start= options from `animate`
    has_weights: bool = False
    downloads_to_cache: bool = False
    weights_env: str | None = None        # environment variable naming its weights folder, if any
    configurable: bool = False            # runs upstream code found through `methods configure`
    download_extras: tuple[str, ...] = ()  # optional parts `weights download --with NAME` adds

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
    def check_weights(cls, root: str | Path) -> list[dict]:
        """Per file: ``{"file", "status" (ok/optional/missing/bad/mismatch), "detail"}``."""
        raise UserError(f"method {cls.name!r} has no weights of its own to check")

    @classmethod
    def download_weights(cls, root: str | Path | None = None, extras: tuple[str, ...] = ()) -> None:
        """Fetch this method's weights: into ``root``, or (``None``) into the cache :meth:`status` searches;
        ``extras`` names optional parts from :attr:`download_extras`."""
        raise UserError(f"method {cls.name!r} has no weights to download")

    @classmethod
    def make_tiny_weights(cls, root: str | Path, seed: int = 0) -> None:
        """Write a tiny random-weight model of the same architecture in the release layout."""
        raise UserError(f"method {cls.name!r} has no tiny model")

    @classmethod
    def configure(cls, repo: str | Path, python: str | Path, weights: str | Path | None = None) -> Path:
        """Record where this method's upstream checkout, interpreter and weights are; returns the config file."""
        raise UserError(f"method {cls.name!r} runs no upstream code; nothing to configure")

    @classmethod
    def options_help(cls) -> list[tuple[str, str, object, str]]:
        """(name, type, default, help) of every ``--option``."""
        rows = []
        for f in dataclasses.fields(cls.Options):
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            rows.append((f.name, kind, f.default, f.metadata.get("help", "")))
        return rows

    @classmethod
    def parse_options(cls, items: Iterable[str]) -> dict:
        """``KEY=VALUE`` strings → keyword arguments, checked against :attr:`Options` (names and types)."""
        known = {f.name: f for f in dataclasses.fields(cls.Options)}
        out = {}
        for item in items:
            key, sep, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise UserError(f"--option wants KEY=VALUE, got {item!r}")
            if key not in known:
                listed = ", ".join(sorted(known)) or "none"
                raise UserError(f"method {cls.name!r} has no option {key!r} (its options: {listed}; "
                                f"`personalive methods info {cls.name}` explains them)")
            out[key] = _convert(key, raw, known[key])
        return out

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


def _convert(key: str, raw: str, spec: dataclasses.Field):
    """A ``--option`` value as its field's type (from the default, else the annotation): bool words,
    integers, floats; strings stay strings; ``none`` clears an optional field."""
    lowered = raw.strip().lower()
    annotation = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", str(spec.type))
    kind = type(spec.default) if spec.default is not None else next(
        (k for k in (bool, int, float, str) if k.__name__ in annotation), str)
    if spec.default is None and lowered == "none":
        return None
    if kind is bool:
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise UserError(f"option {key!r} wants true or false, got {raw!r}")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise UserError(f"option {key!r} wants {'an integer' if kind is int else 'a number'}, "
                            f"got {raw!r}") from None
    return raw


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


_FAILED: dict[str, str] = {}


def _load(ep) -> None:
    """Import one entry point and register its class (or record why it failed)."""
    if ep.name in _REGISTRY or ep.name in _FAILED:
        return
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - someone else's package: report it, keep going
        _FAILED[ep.name] = f"{type(exc).__name__}: {exc}".strip()
        log.debug("method plugin %s failed to load", ep.name, exc_info=True)
        return
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        _FAILED[ep.name] = f"{ep.value} is not a personalive Method subclass"
        return
    register(ep.name)(cls)


def _load_entry_points() -> None:
    """Register every method of the ``personalive.methods`` group: the built-ins (declared in this
    package's own metadata) and third-party ones alike. A plugin that fails to import is recorded
    with its reason, and every other method keeps working."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _load(ep)


def available() -> dict[str, type[Method]]:
    """Every registered method, built-in and from entry points, by name."""
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def failed() -> dict[str, str]:
    """Plugins whose entry point could not be loaded, with the reason."""
    _load_entry_points()
    return dict(sorted(_FAILED.items()))


def get(name: str) -> type[Method]:
    """The method called ``name``. Only its own entry point is imported (a command that uses one
    method does not pay for importing every other method's stack)."""
    if name not in _REGISTRY and not _loaded_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                _load(ep)
                break
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _FAILED:
        raise UserError(f"method {name!r} failed to load: {_FAILED[name]}")
    methods = available()
    if name in methods:
        return methods[name]
    if name in _FAILED:
        raise UserError(f"method {name!r} failed to load: {_FAILED[name]}")
    raise UserError(f"unknown method {name!r}; known methods: {', '.join(methods)}")
