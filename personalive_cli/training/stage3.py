"""Stage III: sliding training of the temporal modules (training.md §7; official ``train_stage3.py``).

Per sequence (n = 40 frames at stride 4 by default), the model is rolled out exactly as streaming inference
runs it, and three of its windows are graded on their own rolled-out inputs (exposure-bias training):

1. Without gradients: the latents of the n frames (VAE samples, in slices of 10 frames), the reference latent
   and CLIP embedding, the reference bank (reference UNet once, 30% of its tokens dropped; none when uncond),
   pose features and motion tokens of every frame from the frozen pose guider and motion encoder (the
   zero-motion / zero-pose flags apply to the whole sequence).
2. The sequence buffer: frames 0-11 are the ground-truth latents noised to t = 0 / 333 / 666 (4 frames each),
   frames 12.. are pure noise.
3. Windows i = 0 .. (n - 16) / 4 read frames 4i .. 4i + 15 at the per-frame timesteps [0 x 4, 333 x 4, 666 x 4,
   999 x 4]. Every third window (0, 3, 6 for 40 frames) is graded: the UNet runs with gradients, all 16
   predictions x̂0 are decoded one frame at a time (decoder gradient checkpointing), scored with the Stage II
   objective (D sees each frame with its own t), one optimiser step, then a discriminator step. The other
   windows run without gradients. Every window writes back as inference does (`slide_window`, the engine's
   own schedule code): chunk 1 becomes x̂0, chunks 2-4 x̂0 re-noised with fresh noise to 0 / 333 / 666; the
   next window reads those three chunks and the next chunk of pure noise.

Only ``temporal_modules`` train (and the discriminator); checkpoints hold their keys only, and an export is
the run's base weights with a new ``temporal_module.pth``. Ablations: ``sliding=false`` builds every window
from the ground truth (noised afresh to the window's timesteps) instead of the rolled-out buffer;
``temporal_attention=chunk_causal`` masks the temporal attention so that a frame sees its own and older
chunks only.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from personalive_cli.models.scheduler import StreamScheduler
from personalive_cli.pipeline.engine import CHUNK, slide_window, window_timesteps
from personalive_cli.pipeline.keypoints import draw_keypoints
from personalive_cli.training.appearance import (
    DISCRIMINATOR_TERMS,
    GENERATOR_TERMS,
    AppearanceStage,
    decode,
    region_weights,
)
from personalive_cli.training.config import TrainConfig
from personalive_cli.training.stage import Stage, StepContext
from personalive_cli.training.stage1 import drop_bank_tokens, vae_sample

WINDOW = 4 * CHUNK  # frames per window
ENCODE_SLICE = 10  # frames per VAE encoder call (the official max_batch_frames)
TEMPORAL_KEY = ".temporal_modules."


def graded_windows(num_windows: int) -> list[int]:
    """The windows that are graded: every third one (0, 3, 6 of 7), as the official loop's i % 3 == 0."""
    return [i for i in range(num_windows) if i % (WINDOW // CHUNK - 1) == 0]


class Stage3(AppearanceStage, Stage):
    name: ClassVar[str] = "stage3"
    trained_modules: ClassVar[tuple[str, ...]] = ("denoising_unet",)
    loss_terms: ClassVar[tuple[str, ...]] = (*GENERATOR_TERMS, *DISCRIMINATOR_TERMS, "uncond", "zero_motion",
                                             "zero_pose")
    default_dataset: ClassVar[str] = "personalive_cli.training.datasets:VideoDataset"
    updates_itself: ClassVar[bool] = True
    generator_updates: ClassVar[int] = 3

    def __init__(self) -> None:
        self.scheduler = StreamScheduler()
        # Set by tests and tools: called with (window index, the window's input latents) before each pass.
        self.on_window = None

    def configure(self, models) -> None:
        models.requires_grad_(False).eval()
        models.denoising_unet.train()
        for name, p in models.denoising_unet.named_parameters():
            p.requires_grad_(TEMPORAL_KEY in name)

    def checkpoint_key(self, key: str) -> bool:
        return key.startswith("denoising_unet.") and TEMPORAL_KEY in key

    def evaluation_config(self, config: TrainConfig) -> TrainConfig:
        import dataclasses

        return dataclasses.replace(config, uncond_ratio=0.0, zero_motion_ratio=0.0, zero_pose_ratio=0.0,
                                   bank_drop_ratio=0.0)

    def dataset_kwargs(self, config: TrainConfig, models) -> dict:
        return dict(frames=config.sequence_frames, stride=config.frame_stride, size=config.size,
                    pose_size=config.pose_size, face_size=models.motion_encoder.config.image_size,
                    clip_size=models.image_encoder.config.image_size, augment=config.augment, seed=config.seed)

    # ------------------------------------------------------------------------------------------------ step

    def training_step(self, models, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        m, cfg = models, ctx.config
        objective = self.ready_objective(cfg, ctx.device)
        unet = m.denoising_unet
        if cfg.temporal_attention != "bidirectional":
            unet.set_temporal_attention(cfg.temporal_attention)
        if cfg.decoder_checkpointing:
            m.vae.enable_gradient_checkpointing()
        frames = batch["frames"]  # (b, n, 3, S, S)
        b, n, _, size = frames.shape[:4]
        if n < WINDOW or n % CHUNK:
            raise ValueError(f"a Stage III sequence has a multiple of {CHUNK} frames, at least {WINDOW}; got {n}")

        # 1. What does not train, without gradients.
        uncond, zero_motion, zero_pose = (torch.rand(3, generator=ctx.generator)
                                          < torch.tensor([cfg.uncond_ratio, cfg.zero_motion_ratio,
                                                          cfg.zero_pose_ratio])).tolist()
        with torch.no_grad(), torch.autocast(ctx.device.type, enabled=False):
            flat = frames.flatten(0, 1)
            latents = torch.cat([vae_sample(m.vae, flat[i:i + ENCODE_SLICE], ctx)
                                 for i in range(0, flat.shape[0], ENCODE_SLICE)])
            latents = latents.unflatten(0, (b, n)).transpose(1, 2)  # (b, 4, n, h, w)
            ref_latent = vae_sample(m.vae, batch["reference"], ctx)
            clip = m.image_encoder(batch["clip_image"].to(m.image_encoder.dtype)).image_embeds[:, None].float()
            kps = m.keypoint_extractor(batch["poses"].flatten(0, 1).float()).posed()
            canvas = draw_keypoints(kps.float(), size).unflatten(0, (b, n)).transpose(1, 2)  # (b, 3, n, S, S)
        with torch.no_grad():
            pose = m.pose_guider(canvas)  # (b, C0, n, h, w)
            motion = m.motion_encoder(batch["faces"].transpose(1, 2))  # (b, n, 32, 16)
            if zero_pose:
                pose = torch.zeros_like(pose)
            if zero_motion:
                motion = torch.zeros_like(motion)
            bank_kv = None if uncond else unet.bank_kv(
                drop_bank_tokens(m.reference_unet(ref_latent, clip), cfg.bank_drop_ratio, ctx))

        # 2. The buffer: ground truth noised to 0 / 333 / 666 for the first 12 frames, pure noise after.
        t_window = window_timesteps(ctx.device)
        warm = WINDOW - CHUNK
        noise = ctx.randn(*latents.shape)
        buffer = torch.cat([self.scheduler.add_noise(latents[:, :, :warm], noise[:, :, :warm], t_window[:warm]),
                            noise[:, :, warm:]], dim=2)

        # 3. Slide.
        weights = region_weights(batch["face_masks"], batch["local_masks"]).transpose(1, 2)  # (b, 1, n, S, S)
        targets = frames.transpose(1, 2)  # (b, 3, n, S, S)
        num_windows = (n - WINDOW) // CHUNK + 1
        graded = graded_windows(num_windows)
        totals: dict[str, list[torch.Tensor]] = {}
        for i in range(num_windows):
            lo, hi = i * CHUNK, i * CHUNK + WINDOW
            if cfg.sliding:
                x = buffer[:, :, lo:hi].clone()  # (the buffer is written below, while x may be in the graph)
            else:  # the ablation: every window from the ground truth
                x = self.scheduler.add_noise(latents[:, :, lo:hi], ctx.randn(b, 4, WINDOW, *latents.shape[-2:]),
                                             t_window)
            if self.on_window is not None:
                self.on_window(i, x)
            if not cfg.sliding and i not in graded:
                continue  # nothing reads an ungraded window's write-back when every window comes from ground truth

            def predict(x=x, lo=lo, hi=hi):
                return unet(x, t_window, clip, motion[:, lo:hi], pose[:, :, lo:hi], bank_kv)

            if i not in graded:
                with torch.no_grad():
                    eps = predict()
            else:
                eps = ctx.parallel(predict)
            fresh = ctx.randn(*x.shape)
            written, x0 = slide_window(self.scheduler, eps, x, noise=fresh)
            buffer[:, :, lo:hi] = written.detach()
            if i not in graded:
                continue
            image = decode(m.vae, x0.transpose(1, 2).flatten(0, 1), chunk=1)  # (b*16, 3, S, S)
            image = image.unflatten(0, (b, WINDOW)).transpose(1, 2)  # (b, 3, 16, S, S)
            d_t = t_window.expand(b, -1)
            terms = objective.generator_loss(image, targets[:, :, lo:hi], weights[:, :, lo:hi], d_t, ctx)
            ctx.update_generator(terms["loss"])
            terms.update(objective.update_discriminator(image, targets[:, :, lo:hi], d_t, ctx))
            for k, v in terms.items():
                totals.setdefault(k, []).append(v.detach().float().cpu())
        out = {k: torch.stack(v).mean() for k, v in totals.items()}
        flags = torch.tensor([uncond, zero_motion, zero_pose], dtype=torch.float32)
        return {**out, "uncond": flags[0], "zero_motion": flags[1], "zero_pose": flags[2]}
