"""PersonaLive's DDIM step: per-frame timesteps and a fixed step length (η = 0, ε-prediction).

The noise schedule is diffusers' "scaled_linear" with β from 0.00085 to **0.02** (not SD's 0.012)
over 1000 steps, so ᾱ comes from diffusers' own ``DDIMScheduler``, and so does ``add_noise`` (frames
folded into its batch, one timestep per frame). The step itself is written here, because the official
one differs from diffusers' ``DDIMScheduler.step`` in two ways that matter: every frame of the window has
its own timestep (diffusers' step takes one), and the previous timestep is always ``t - step_length``
(333) instead of coming from ``set_timesteps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from personalive_cli.models.unet_blocks import fold_frames, unfold_frames


@dataclass(frozen=True)
class SchedulerConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.02
    beta_schedule: str = "scaled_linear"
    step_length: int = 333
    timesteps: tuple[int, ...] = (999, 666, 333, 0)  # noise levels of the four window chunks, newest first


class StreamScheduler:
    """``step`` and ``add_noise`` over a window whose frames sit at different noise levels."""

    def __init__(self, config: SchedulerConfig | None = None):
        self.config = config = config or SchedulerConfig()
        self.ddim = ddim = DDIMScheduler(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
                             beta_end=config.beta_end, beta_schedule=config.beta_schedule,
                             set_alpha_to_one=True, clip_sample=False, prediction_type="epsilon")
        self.alphas_cumprod = ddim.alphas_cumprod.to(torch.float32)  # (1000,)

    def _alpha(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_t for integer timesteps; 1 for t < 0 (``set_alpha_to_one``)."""
        if self.alphas_cumprod.device != t.device:  # moved once: a copy from the host every step would stall
            self.alphas_cumprod = self.alphas_cumprod.to(t.device)  # the stream (and break a CUDA graph)
        a = self.alphas_cumprod[t.clamp(min=0)]
        return torch.where(t >= 0, a, torch.ones_like(a))

    def step(self, eps: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor,
             noise: torch.Tensor | None = None):
        """One DDIM step of ``step_length`` for every frame.

        eps, sample: (b, c, f, h, w); timesteps: (f,) integer. Returns (x_prev, x0), both float32.
        ``noise`` (training, [T] Algorithm 1): x0 re-noised with this fresh noise to t - step_length, instead
        of the deterministic step along ε̂ (η = 0, inference). Same marginal noise level either way; a frame at
        t = 0 comes out as x0 exactly in both (ᾱ = 1 below t = 0).
        """
        t = timesteps.to(device=sample.device, dtype=torch.long)
        shape = (1, 1, -1, 1, 1)
        a_t = self._alpha(t).view(shape)
        a_prev = self._alpha(t - self.config.step_length).view(shape)
        eps32, x32 = eps.float(), sample.float()
        x0 = (x32 - (1 - a_t).sqrt() * eps32) / a_t.sqrt()
        direction = eps32 if noise is None else noise.float()
        x_prev = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * direction
        return x_prev, x0

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·noise with per-frame t; x0, noise: (b, c, f, h, w), t: (f,).

        diffusers' ``DDIMScheduler.add_noise`` on the frame-folded (b*f, c, h, w) tensors, one timestep per
        row. It casts ᾱ to the sample dtype before the square roots, as the official code does (fp16 there).
        """
        b, f = x0.shape[0], x0.shape[2]
        if timesteps.numel() != f:
            raise ValueError(f"{timesteps.numel()} timesteps for {f} frames")
        t = timesteps.to(device=x0.device, dtype=torch.long).reshape(-1).repeat(b)  # (b*f,), frame fastest
        return unfold_frames(self.ddim.add_noise(fold_frames(x0), fold_frames(noise), t), f)
