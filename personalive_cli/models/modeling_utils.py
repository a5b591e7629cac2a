"""What every PersonaLive network adds to diffusers' `ModelMixin` / `ConfigMixin`.

Each network is declared ``class Net(PersonaLiveModelMixin, ModelMixin, ConfigMixin)`` with a
``@register_to_config`` ``__init__``, so it has diffusers' ``from_config`` / ``from_pretrained`` /
``save_pretrained``. This mixin (first in the bases, so its methods win) changes three things:

* **Strict configs.** diffusers logs a warning and drops config keys that ``__init__`` does not take; here
  they are a ``ValueError`` (a typo in a config must not silently build the default architecture).
* **Atomic saves.** ``save_pretrained`` writes into a temporary folder beside the target and moves the
  finished files into place (config last), so an interrupted save never leaves a truncated weights file or
  a config describing weights that are not there.
* **Gradient checkpointing that does not depend on the diffusers version.** diffusers changed how
  ``enable_gradient_checkpointing`` reaches the blocks (a ``_set_gradient_checkpointing(module, value)``
  hook until 0.31, a ``_gradient_checkpointing_func`` on every module with a ``gradient_checkpointing``
  attribute after). Our blocks derive from `CheckpointedModule` and only those are switched; stock
  diffusers sub-models inside ours (e.g. ``Transformer2DModel``) are left alone, because our checkpoint
  already covers them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.utils.checkpoint
from torch import nn

__all__ = ["CheckpointedModule", "PersonaLiveModelMixin", "accepts_config_dataclass", "dataclass_from_config"]

CheckpointFunc = Callable[..., Any]
T = TypeVar("T")


class CheckpointedModule(nn.Module):
    """A block that can recompute its activations in the backward pass (training memory).

    ``gradient_checkpointing`` is switched by the owning model's ``enable_gradient_checkpointing()``.
    Only runs under autograd are checkpointed; inference is unchanged.
    """

    gradient_checkpointing: bool = False
    checkpoint_func: CheckpointFunc | None = None

    def checkpointed(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, recomputed in backward when checkpointing is on and gradients are being recorded.

        Non-tensor arguments are fine (non-reentrant checkpointing). ``fn`` must be deterministic and
        must not update state (e.g. BatchNorm running statistics in training mode would be updated twice).
        """
        if not (self.gradient_checkpointing and torch.is_grad_enabled()):
            return fn(*args)
        if self.checkpoint_func is not None:
            return self.checkpoint_func(fn, *args)
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)


def dataclass_from_config(cls: type[T], config: Mapping[str, Any]) -> T:
    """The (frozen, validated) config dataclass ``cls`` built from a registered diffusers config: its fields
    are read from ``config`` (other keys, e.g. ``_use_default_values``, are not fields) and JSON lists become
    tuples again."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in config:
            v = config[f.name]
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


def accepts_config_dataclass(config_cls: type, to_kwargs: Callable[[Any], dict] | None = None,
                             ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Let ``Net(cfg)`` (one positional ``config_cls`` instance, or None for the defaults) mean
    ``Net(**to_kwargs(cfg))`` (default ``cfg.to_dict()``), as before the networks were diffusers models (callers such as the LivePortrait
    baseline build them that way). Goes outside ``@register_to_config``; ``inspect.signature`` (and hence
    diffusers' config parsing) still sees the keyword signature through ``functools.wraps``."""

    def wrap(init: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(init)
        def inner(self: nn.Module, *args: Any, **kwargs: Any) -> None:
            if len(args) == 1 and not kwargs and (args[0] is None or isinstance(args[0], config_cls)):
                kwargs = {} if args[0] is None else (to_kwargs or config_cls.to_dict)(args[0])
                args = ()
            init(self, *args, **kwargs)

        return inner

    return wrap


class PersonaLiveModelMixin:
    """Strict config parsing, atomic ``save_pretrained`` and gradient checkpointing (see the module docstring).

    Put it before ``ModelMixin, ConfigMixin`` in the bases.
    """

    _supports_gradient_checkpointing = True

    # ---------------------------------------------------------------------------------------------- config

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):  # noqa: ANN001, ANN206 - diffusers' signature
        expected = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        expected -= set(getattr(cls, "ignore_for_config", []))
        unknown = sorted(k for k in config_dict if not str(k).startswith("_") and k not in expected)
        if unknown:
            raise ValueError(f"{cls.__name__} config has unknown keys: {', '.join(map(str, unknown))} "
                             f"(expected a subset of {', '.join(sorted(expected))})")
        return super().extract_init_dict(config_dict, **kwargs)

    # ---------------------------------------------------------------------------------------------- save

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained`` (same arguments), written to a temporary folder first and moved in.

        Weight files of an earlier save in the same folder (``diffusion_pytorch_model*``) that this save did
        not write are removed afterwards, as diffusers does, so the folder never holds two weight sets.
        """
        target = Path(save_directory)
        if target.is_file():
            raise ValueError(f"{target} is a file, not a folder")
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
            super().save_pretrained(tmp, **kwargs)
            written = sorted(Path(tmp).iterdir(), key=lambda p: (p.name == self.config_name, p.name))
            for path in written:
                os.replace(path, target / path.name)
        names = {p.name for p in written}
        for stale in target.glob("diffusion_pytorch_model*"):
            if stale.is_file() and stale.name not in names:
                stale.unlink()

    # ---------------------------------------------------------------------------------------------- checkpointing

    def enable_gradient_checkpointing(self, gradient_checkpointing_func: CheckpointFunc | None = None) -> None:
        """Recompute block activations in backward. ``gradient_checkpointing_func(fn, *args)`` replaces
        ``torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)`` if given."""
        self._switch_checkpointing(True, gradient_checkpointing_func)

    def disable_gradient_checkpointing(self) -> None:
        self._switch_checkpointing(False, None)

    def _switch_checkpointing(self, enable: bool, func: CheckpointFunc | None) -> None:
        blocks = [m for m in self.modules() if isinstance(m, CheckpointedModule)]
        if not blocks:
            raise ValueError(f"{type(self).__name__} has no checkpointable blocks")
        for block in blocks:
            block.gradient_checkpointing = enable
            block.checkpoint_func = func
