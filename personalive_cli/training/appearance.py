"""The Stage II/III objective (training.md §6-7): what a decoded prediction is scored with, and the
discriminator's update.

Generator: ``mse + face + lpips_weight * lpips + adversarial_weight * softplus(-D(x̂, t))``, where ``face`` is
the face/eye/mouth-weighted pixel MSE and the adversarial term is added once more than ``adversarial_after``
steps are done. Discriminator (once more than ``discriminator_after`` steps are done): ``softplus(D(x̂, t)) +
softplus(-D(x, t))`` on the detached prediction (+ ``r1_gamma / 2`` x R1 on the real images when asked for),
its own optimiser. Both only while training: a validation loss has no adversarial term (D changes over the
run, so the number would not compare across steps).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from personalive_cli.training.config import TrainConfig
from personalive_cli.training.losses import (
    LPIPSLoss,
    discriminator_loss,
    generator_adversarial,
    masked_mse,
    region_weights,
)
from personalive_cli.training.stage import StepContext

NAN = float("nan")
GENERATOR_TERMS = ("loss", "mse", "face", "lpips", "adversarial")
DISCRIMINATOR_TERMS = ("d_loss", "d_real", "d_fake")


def build_lpips(config: TrainConfig) -> LPIPSLoss:
    """LPIPS-VGG from ``lpips_vgg`` (or torch hub's cache); "random": an untrained trunk (tests only)."""
    return LPIPSLoss.random_for_tests() if config.lpips_vgg == "random" else LPIPSLoss(config.lpips_vgg)


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """``module`` without parameter gradients inside the block (the generator's pass through D)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def decode(vae, latents: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """Latents (n, 4, h, w) (x scaling factor) -> images (n, 3, S, S) in [-1, 1], float32, ``chunk`` at a time,
    with gradients flowing through the frozen decoder."""
    z = latents / vae.config.scaling_factor
    images = [vae.decode(z[i:i + chunk].to(vae.dtype)).sample for i in range(0, z.shape[0], chunk)]
    return torch.cat(images).float()


class AppearanceObjective:
    """Scores decoded predictions and updates the discriminator (see the module docstring)."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.lpips = build_lpips(config)

    def to(self, device: torch.device) -> AppearanceObjective:
        self.lpips.to(device)
        return self

    def generator_loss(self, image: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                       timesteps: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        """image, target: (n, 3, S, S) or (b, 3, f, S, S) in [-1, 1]; weights: the face-region map (1 channel);
        timesteps: what D is conditioned on ((n,) or (b, f)). Returns the terms, ``loss`` with gradients."""
        cfg = self.config
        mse = F.mse_loss(image.float(), target.float())
        face = masked_mse(image, target, weights)
        lpips = self.lpips(image, target)
        loss = mse + face + cfg.lpips_weight * lpips
        adversarial = torch.full((), NAN, device=image.device)
        d = ctx.discriminator
        if d is not None and ctx.training and ctx.step > cfg.adversarial_after:
            with frozen(d):
                adversarial = generator_adversarial(d(image.float(), timesteps))
            loss = loss + cfg.adversarial_weight * adversarial
        return {"loss": loss, "mse": mse.detach(), "face": face.detach(), "lpips": lpips.detach(),
                "adversarial": adversarial.detach()}

    def update_discriminator(self, image: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
                             ctx: StepContext) -> dict[str, torch.Tensor]:
        """One discriminator update on (the detached) ``image`` vs ``target`` when it is due; its terms (NaN
        when no update was made)."""
        cfg = self.config
        if ctx.discriminator is None or not ctx.training or ctx.step <= cfg.discriminator_after:
            return {k: torch.full((), NAN) for k in DISCRIMINATOR_TERMS}
        fake_logits, real_logits, r1 = ctx.discriminate(image.detach().float(), target.float(), timesteps)
        loss = discriminator_loss(real_logits, fake_logits)
        if r1 is not None:
            loss = loss + cfg.r1_gamma / 2 * r1
        ctx.update_discriminator(loss)
        return {"d_loss": loss.detach(), "d_real": real_logits.detach().float().mean(),
                "d_fake": fake_logits.detach().float().mean()}


class AppearanceStage:
    """What Stages II and III share as `Stage` s: the objective, built before the run folder appears (a missing
    VGG file fails first); a discriminator unless ``gan: false``, and then no adversarial or discriminator
    columns in metrics.csv. Mixed in before the `Stage` base."""

    objective: AppearanceObjective | None = None

    def setup(self, config: TrainConfig) -> None:
        self.objective = AppearanceObjective(config)

    def uses_discriminator(self, config: TrainConfig) -> bool:
        return config.gan

    def logged_terms(self, config: TrainConfig) -> tuple[str, ...]:
        if self.uses_discriminator(config):
            return self.loss_terms
        return tuple(k for k in self.loss_terms if k not in ("adversarial", *DISCRIMINATOR_TERMS))

    def ready_objective(self, config: TrainConfig, device: torch.device) -> AppearanceObjective:
        """The objective on ``device`` (built here when the runner did not call `setup`, e.g. in a unit test)."""
        if self.objective is None:
            self.setup(config)
        return self.objective.to(device)


__all__ = ["DISCRIMINATOR_TERMS", "GENERATOR_TERMS", "NAN", "AppearanceObjective", "AppearanceStage", "build_lpips",
           "decode",
           "frozen", "region_weights"]
