"""Stage I: image-level hybrid motion training (training.md §5; official ``train_stage1.py``).

Per micro-batch of (reference, target) frame pairs of the same clip:

1. x0 = VAE latent of the target (``latent_dist.sample()`` x scaling factor), the reference latent likewise;
   the CLIP embedding of the reference; the target's own keypoints (canonical points posed with its own
   rotation, scale and translation, no expression) from the frozen extractor on the 256² target, drawn as
   the dot canvas. All frozen, no gradients.
2. Noise ε with an offset (0.05 x one extra normal value per sample and channel), t uniform in [0, 1000)
   per sample, z_t = √ᾱ x0 + √(1-ᾱ) ε (the DDIM schedule of inference).
3. Pose features (pose guider on the canvas) and motion tokens (motion encoder on the augmented face crop).
   Drawn once per step for the whole batch: uncond (10%: no reference path at all, CLIP kept), zero motion
   tokens (10%), zero pose features (10%). Unless uncond, the reference UNet runs at t = 0 and 30% of each
   bank's tokens are dropped (a fresh random subset per sample and bank) before the K/V projection.
4. The denoising UNet predicts ε̂ for the single frame, temporal modules off; x̂0 = (z_t - √(1-ᾱ) ε̂)/√ᾱ in fp32.
5. loss = MSE(x̂0, x0) + MSE(M x̂0, M x0), M = face mask + eye/mouth mask (1 on the face, 2 on eyes and mouth,
   0 elsewhere), nearest-downsampled to the latent grid and repeated over the 4 channels.

Trainable: the denoising UNet except its temporal modules (2-D part + motion modules), the reference UNet
except ``up_blocks.3`` (its output is never read), the pose guider and the motion encoder (train mode:
BatchNorm batch statistics, dropout). Frozen: VAE, CLIP image encoder, keypoint extractor.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from personalive_cli.models.scheduler import StreamScheduler
from personalive_cli.pipeline.keypoints import draw_keypoints
from personalive_cli.training.config import TrainConfig
from personalive_cli.training.stage import Stage, StepContext

FROZEN_REFERENCE_PREFIX = "up_blocks.3."


def drop_bank_tokens(banks: dict[str, torch.Tensor], ratio: float, ctx: StepContext) -> dict[str, torch.Tensor]:
    """Keep a random ``1 - ratio`` of each bank's tokens, per sample: {name: (b, L, C)} -> (b, L_keep, C).

    The kept subset is drawn anew for every sample and bank (MAE-style random masking); attention does not
    depend on the order of its keys, so the kept tokens stay in the random order.
    """
    if ratio <= 0:
        return banks
    out = {}
    for name, tokens in banks.items():
        b, length, c = tokens.shape
        keep = max(1, int(length * (1 - ratio)))
        order = torch.rand(b, length, generator=ctx.generator).argsort(dim=1)[:, :keep].to(tokens.device)
        out[name] = tokens.gather(1, order[..., None].expand(-1, -1, c))
    return out


def vae_sample(vae, images: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """Images (b, 3, S, S) in [-1, 1] -> a latent sample x scaling factor, (b, 4, S/8, S/8) float32.

    ``latent_dist.sample()`` with the noise drawn from the step's generator (reproducible, device-independent).
    """
    dist = vae.encode(images.to(vae.dtype)).latent_dist
    noise = ctx.randn(*dist.mean.shape).to(dist.mean.dtype)
    return (dist.mean + dist.std * noise).float() * vae.config.scaling_factor


def face_weight_mask(face_mask: torch.Tensor, local_mask: torch.Tensor, size: tuple[int, int],
                     channels: int = 4) -> torch.Tensor:
    """The face-region loss weight on the latent grid: (b, 1, S, S) {0, 1} masks -> (b, channels, h, w) with
    1 on the face, 2 on eyes and mouth (inside the face), 0 elsewhere (nearest-neighbour downsampling)."""
    mask = (F.interpolate(face_mask.float(), size=size, mode="nearest")
            + F.interpolate(local_mask.float(), size=size, mode="nearest"))
    return mask.expand(-1, channels, -1, -1)


class Stage1(Stage):
    name: ClassVar[str] = "stage1"
    trained_modules: ClassVar[tuple[str, ...]] = ("denoising_unet", "reference_unet", "pose_guider", "motion_encoder")
    loss_terms: ClassVar[tuple[str, ...]] = ("loss", "mse", "face", "uncond", "zero_motion", "zero_pose")
    default_dataset: ClassVar[str] = "personalive_cli.training.datasets:ImagePairDataset"

    def __init__(self) -> None:
        self.scheduler = StreamScheduler()

    def configure(self, models) -> None:
        models.requires_grad_(False).eval()
        for attr in self.trained_modules:
            getattr(models, attr).train()
        for name, p in models.denoising_unet.named_parameters():
            p.requires_grad_(".temporal_modules." not in name)
        for name, p in models.reference_unet.named_parameters():
            p.requires_grad_(not name.startswith(FROZEN_REFERENCE_PREFIX))
        models.pose_guider.requires_grad_(True)
        models.motion_encoder.requires_grad_(True)

    def evaluation_config(self, config: TrainConfig) -> TrainConfig:
        """The full model: no conditioning dropout, the whole reference bank."""
        return dataclasses.replace(config, uncond_ratio=0.0, zero_motion_ratio=0.0, zero_pose_ratio=0.0,
                                   bank_drop_ratio=0.0)

    def dataset_kwargs(self, config: TrainConfig, models) -> dict:
        return dict(size=config.size, pose_size=config.pose_size, face_size=models.motion_encoder.config.image_size,
                    clip_size=models.image_encoder.config.image_size, margin=config.margin, augment=config.augment,
                    seed=config.seed)

    def training_step(self, models, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        m, cfg = models, ctx.config
        target = batch["target"]
        b, size = target.shape[0], target.shape[-1]
        # The frozen networks run in their own dtypes, outside mixed precision (as the official loop does, where
        # only the trained networks are under autocast): the keypoints, hence the dots, stay fp32.
        with torch.no_grad(), torch.autocast(ctx.device.type, enabled=False):
            x0 = vae_sample(m.vae, target, ctx)  # (b, 4, h, w)
            ref_latent = vae_sample(m.vae, batch["reference"], ctx)
            clip = m.image_encoder(batch["clip_image"].to(m.image_encoder.dtype)).image_embeds[:, None].float()
            kps = m.keypoint_extractor(batch["target_pose"].float()).posed()  # own canonical points, own R, s, t
            canvas = draw_keypoints(kps.float(), size)  # (b, 3, S, S) in [0, 1]
        h, w = x0.shape[-2:]
        noise = ctx.randn(b, 4, h, w) + cfg.noise_offset * ctx.randn(b, 4, 1, 1)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=ctx.generator).to(ctx.device)
        uncond, zero_motion, zero_pose = (torch.rand(3, generator=ctx.generator)
                                          < torch.tensor([cfg.uncond_ratio, cfg.zero_motion_ratio,
                                                          cfg.zero_pose_ratio])).tolist()
        z_t = self.scheduler.ddim.add_noise(x0, noise, t)

        pose = m.pose_guider(canvas[:, :, None])  # (b, C0, 1, h, w)
        motion = m.motion_encoder(batch["target_face"])[:, None]  # (b, 1, 32, 16)
        if zero_pose:
            pose = torch.zeros_like(pose)
        if zero_motion:
            motion = torch.zeros_like(motion)
        bank_kv = None
        if not uncond:
            banks = m.reference_unet(ref_latent, clip)
            bank_kv = m.denoising_unet.bank_kv(drop_bank_tokens(banks, cfg.bank_drop_ratio, ctx))
        eps = m.denoising_unet(z_t[:, :, None], t, clip, motion, pose, bank_kv, temporal=False)[:, :, 0]

        alpha = self.scheduler.alphas_cumprod.to(ctx.device)[t].view(b, 1, 1, 1)
        x0_pred = (z_t.float() - (1 - alpha).sqrt() * eps.float()) / alpha.sqrt()  # fp32, whatever autocast does
        mask = face_weight_mask(batch["face_mask"], batch["local_mask"], (h, w))
        mse = F.mse_loss(x0_pred, x0)
        face = F.mse_loss(x0_pred * mask, x0 * mask)
        flags = torch.tensor([uncond, zero_motion, zero_pose], dtype=torch.float32, device=ctx.device)
        return {"loss": mse + face, "mse": mse.detach(), "face": face.detach(), "uncond": flags[0],
                "zero_motion": flags[1], "zero_pose": flags[2]}
