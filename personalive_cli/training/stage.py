"""The stage interface: what differs between training stages, behind three methods.

A `Stage` says which networks train (``configure`` / ``trainable_parameters``), how one micro-batch becomes
loss terms (``training_step``), and which dataset feeds it (``dataset_kwargs``). Everything else (accelerate,
the run folder, checkpoints and resume, metrics, validation strips, export) is the generic
`personalive_cli.training.runner.Runner`, shared by all stages.

Two kinds of step. A stage with ``updates_itself = False`` (Stage I) returns its loss and the runner
back-propagates it and steps the optimiser. A stage with ``updates_itself = True`` (Stages II and III: a
generator step then a discriminator step, or three generator steps per sequence) drives the updates itself
through its `StepContext`: ``ctx.parallel(fn, ...)`` runs the part of the forward pass whose gradients must be
synchronised across processes, ``ctx.update_generator(loss)`` and ``ctx.update_discriminator(loss)``
back-propagate and step. When the step is evaluated for a validation loss those calls only run the
forward pass (``ctx.training`` is False).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from personalive_cli.training.config import TrainConfig


@dataclass
class StepContext:
    """What a training step may use besides the batch.

    ``generator`` (a CPU generator) is seeded from (run seed, micro-step, process), so every random draw of
    a step (noise, timesteps, dropout flags, token drops) is reproducible and a resumed run draws exactly
    what the uninterrupted run would have; the global torch RNG is seeded the same way (for dropout layers).
    """

    step: int  # the optimiser step being computed (0-based)
    micro_step: int  # step * gradient_accumulation + index of the micro-batch
    generator: torch.Generator
    device: torch.device
    config: TrainConfig

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal noise drawn on the CPU (the same numbers on every device), moved to the device."""
        return torch.randn(shape, generator=self.generator).to(self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator).to(self.device)

    # The optimisation hooks of self-updating stages (see the module docstring), given by the runner; without
    # one (a unit test, or the validation loss) the step runs forward only and updates nothing.
    updater: Updater | None = None

    @property
    def training(self) -> bool:
        return self.updater is not None and self.updater.training

    @property
    def discriminator(self) -> nn.Module | None:
        """The discriminator itself (for the generator's adversarial term), or None when the run has none."""
        return self.updater.discriminator if self.updater else None

    def parallel(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` inside the data-parallel wrapper of the trained networks, so that the
        gradients of what it returns are synchronised across processes."""
        return self.updater.parallel(fn, *args, **kwargs) if self.training else fn(*args, **kwargs)

    def update_generator(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` into the trained networks and step their optimiser (at the last micro-batch)."""
        if self.training:
            self.updater.update_generator(loss)

    def discriminate(self, fake: torch.Tensor, real: torch.Tensor, timesteps) -> tuple[torch.Tensor, torch.Tensor]:
        """(D(fake.detach(), t), D(real, t)), through the discriminator's data-parallel wrapper when training."""
        if self.training:
            return self.updater.discriminate(fake, real, timesteps)
        return self.discriminator(fake.detach(), timesteps), self.discriminator(real, timesteps)

    def update_discriminator(self, loss: torch.Tensor) -> None:
        if self.training:
            self.updater.update_discriminator(loss)


class Updater(Protocol):
    """What the runner gives a self-updating stage through `StepContext` (``personalive_cli.training.runner``)."""

    training: bool
    discriminator: nn.Module | None

    def parallel(self, fn, *args, **kwargs): ...

    def update_generator(self, loss: torch.Tensor) -> None: ...

    def discriminate(self, fake: torch.Tensor, real: torch.Tensor, timesteps) -> tuple[torch.Tensor, torch.Tensor]: ...

    def update_discriminator(self, loss: torch.Tensor) -> None: ...


def step_seed(seed: int, micro_step: int, rank: int) -> int:
    """A 63-bit seed for one micro-step of one process, well mixed (SeedSequence) so neighbours differ."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, micro_step, rank]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class Stage:
    """Base class of the training stages (see the module docstring)."""

    name: ClassVar[str]
    # Attributes of PersonaLiveModels whose parameters (some or all) are trained: they are wrapped for
    # data-parallel training and saved in checkpoints; the other networks stay frozen outside.
    trained_modules: ClassVar[tuple[str, ...]]
    # Names of the terms ``training_step`` returns ("loss" first): the columns of metrics.csv.
    loss_terms: ClassVar[tuple[str, ...]]
    # module:Class of the dataset the stage reads (the config key ``dataset`` replaces it).
    default_dataset: ClassVar[str]
    # True: ``training_step`` makes its own updates through the context (see the module docstring).
    updates_itself: ClassVar[bool] = False
    # Generator updates per step (more than one cannot be combined with gradient accumulation).
    generator_updates: ClassVar[int] = 1

    def setup(self, config: TrainConfig) -> None:
        """Build what the stage needs besides the PersonaLive networks (e.g. the LPIPS network), before the run
        folder is created, so that a missing file is one clear error with nothing written."""

    def uses_discriminator(self, config: TrainConfig) -> bool:
        """Whether the run trains a discriminator beside the generator."""
        return False

    def logged_terms(self, config: TrainConfig) -> tuple[str, ...]:
        """The terms of ``loss_terms`` this run logs (its metrics.csv columns): by default all of them."""
        return self.loss_terms

    def checkpoint_key(self, key: str) -> bool:
        """Whether the trained-network state key ``module.name`` (e.g. ``denoising_unet.conv_in.weight``)
        goes into checkpoints (the others keep the run's base weights). Default: every key."""
        return True

    def configure(self, models) -> None:
        """Set ``requires_grad`` and train/eval modes on ``models`` (a PersonaLiveModels) for this stage."""
        raise TypeError(f"{type(self).__name__} must define configure()")

    def trainable_parameters(self, models) -> list[nn.Parameter]:
        """The parameters the optimiser updates (after ``configure``)."""
        return [p for name in self.trained_modules for p in getattr(models, name).parameters() if p.requires_grad]

    def training_step(self, models, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Loss terms of one micro-batch: ``"loss"`` (what is back-propagated) and any others (logged)."""
        raise TypeError(f"{type(self).__name__} must define training_step()")

    def evaluation_config(self, config: TrainConfig) -> TrainConfig:
        """The config a validation loss is computed with (``training_step`` under no_grad, eval mode, fixed
        samples and draws): by default the training config."""
        return config

    def dataset_kwargs(self, config: TrainConfig, models) -> dict:
        """Keyword arguments of the stage's dataset class, besides the data folder."""
        raise TypeError(f"{type(self).__name__} must define dataset_kwargs()")

    def frozen_parameters(self, models) -> Iterable[tuple[str, nn.Parameter]]:
        """Every parameter that must not change (for checks and tests)."""
        for attr in ("vae", "image_encoder", "reference_unet", "denoising_unet", "pose_guider", "motion_encoder",
                     "keypoint_extractor"):
            for name, p in getattr(models, attr).named_parameters():
                if not p.requires_grad:
                    yield f"{attr}.{name}", p
