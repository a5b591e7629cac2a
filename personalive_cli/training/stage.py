"""The stage interface: what differs between training stages, behind three methods.

A `Stage` says which networks train (``configure`` / ``trainable_parameters``), how one micro-batch becomes
loss terms (``training_step``), and which dataset feeds it (``dataset_kwargs``). Everything else (accelerate,
the run folder, checkpoints and resume, metrics, validation strips, export) is the generic
`personalive_cli.training.runner.Runner`, shared by all stages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

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
