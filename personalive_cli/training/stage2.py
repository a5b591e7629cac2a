"""Stage II: few-step appearance distillation (training.md §6; official ``train_stage2.py``).

No teacher: the model learns to denoise on the inference ladder 999 → 666 → 333 → 0 against the ground truth.
Per step (the draws are shared by the batch, as in the official loop):

1. The frozen parts, without gradients: the reference latent (a VAE sample), its CLIP embedding, the target's
   keypoint canvas (as Stage I). n ~ U{1..unroll_max}; the uncond / zero-motion / zero-pose flags.
2. Start from pure noise at t = 999. n − 1 passes without gradients, each predicting ε̂ → x̂0 and re-noising
   x̂0 with fresh noise to the next rung (`StreamScheduler.step` with injected noise: the inference step's code
   path). The reference UNet runs on the first of them only; the later ones reuse its bank.
3. The graded pass at rung n: the reference UNet runs again, with gradients (so it learns only through this
   pass), the denoising UNet predicts ε̂ → x̂0 (fp32), and the frozen VAE decodes x̂0 with gradients.
4. Generator loss (`AppearanceObjective`): pixel MSE + face-region MSE + 2·LPIPS-VGG + 0.05·softplus(−D(x̂, t)),
   one optimiser step; then a discriminator step on the detached x̂ (both from configurable steps).

Trainable: as Stage I (denoising UNet without its temporal modules, reference UNet without ``up_blocks.3``,
pose guider, motion encoder), plus the discriminator.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from personalive_cli.errors import UserError
from personalive_cli.pipeline.keypoints import draw_keypoints
from personalive_cli.training.appearance import (
    DISCRIMINATOR_TERMS,
    GENERATOR_TERMS,
    AppearanceStage,
    decode,
    region_weights,
)
from personalive_cli.training.config import TrainConfig
from personalive_cli.training.discriminator import DiscriminatorConfig
from personalive_cli.training.stage import StepContext
from personalive_cli.training.stage1 import Stage1, drop_bank_tokens, vae_sample


class Stage2(AppearanceStage, Stage1):
    name: ClassVar[str] = "stage2"
    loss_terms: ClassVar[tuple[str, ...]] = (*GENERATOR_TERMS, *DISCRIMINATOR_TERMS, "unroll", "uncond", "zero_motion",
                                             "zero_pose")
    updates_itself: ClassVar[bool] = True

    def setup(self, config: TrainConfig) -> None:
        group = DiscriminatorConfig().mbstd_group_size  # D compares groups of this many images of a batch
        if self.uses_discriminator(config) and config.batch_size > group and config.batch_size % group:
            raise UserError(f"bad config: the discriminator's minibatch-stddev layer needs batch_size {group} or less, "
                            f"or a multiple of {group}, got {config.batch_size} (or train without it: --set gan=false)")
        super().setup(config)

    def ladder(self) -> tuple[int, ...]:
        return self.scheduler.config.timesteps  # (999, 666, 333, 0)

    def training_step(self, models, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        m, cfg = models, ctx.config
        objective = self.ready_objective(cfg, ctx.device)
        target = batch["target"]
        b, size = target.shape[0], target.shape[-1]
        with torch.no_grad(), torch.autocast(ctx.device.type, enabled=False):
            ref_latent = vae_sample(m.vae, batch["reference"], ctx)  # (b, 4, h, w)
            clip = m.image_encoder(batch["clip_image"].to(m.image_encoder.dtype)).image_embeds[:, None].float()
            kps = m.keypoint_extractor(batch["target_pose"].float()).posed()
            canvas = draw_keypoints(kps.float(), size)
        h, w = ref_latent.shape[-2:]
        training = ctx.training
        # The full ladder when evaluating (the inference path), n ~ U{1..unroll_max} when training.
        n = int(torch.randint(1, cfg.unroll_max + 1, (1,), generator=ctx.generator)) if training else 4
        uncond, zero_motion, zero_pose = (torch.rand(3, generator=ctx.generator)
                                          < torch.tensor([cfg.uncond_ratio, cfg.zero_motion_ratio,
                                                          cfg.zero_pose_ratio])).tolist()

        def conditions():
            pose = m.pose_guider(canvas[:, :, None])  # (b, C0, 1, h, w)
            motion = m.motion_encoder(batch["target_face"])[:, None]  # (b, 1, 32, 16)
            return (torch.zeros_like(pose) if zero_pose else pose,
                    torch.zeros_like(motion) if zero_motion else motion)

        def bank():
            return None if uncond else m.denoising_unet.bank_kv(
                drop_bank_tokens(m.reference_unet(ref_latent, clip), cfg.bank_drop_ratio, ctx))

        def predict(z: torch.Tensor, t: torch.Tensor, bank_kv) -> torch.Tensor:
            pose, motion = conditions()
            return m.denoising_unet(z, t, clip, motion, pose, bank_kv, temporal=False)

        # n - 1 passes without gradients down the ladder, re-noising with fresh noise.
        z = ctx.randn(b, 4, 1, h, w)  # (b, 4, f=1, h, w), pure noise at t = 999
        ladder = self.ladder()
        with torch.no_grad():
            bank_kv = bank() if n > 1 else None
            for i in range(n - 1):
                t = torch.tensor([ladder[i]], device=ctx.device)
                eps = predict(z, t, bank_kv)
                z, _ = self.scheduler.step(eps, t, z, noise=ctx.randn(b, 4, 1, h, w))
        # The graded pass: the reference UNet again, now with gradients.
        t = torch.tensor([ladder[n - 1]], device=ctx.device)
        eps = ctx.parallel(lambda: predict(z, t, bank()))
        _, x0 = self.scheduler.step(eps, t, z)
        image = decode(m.vae, x0[:, :, 0])  # (b, 3, S, S), gradients through the frozen decoder
        d_t = t.expand(b)
        terms = objective.generator_loss(image, target, region_weights(batch["face_mask"], batch["local_mask"]),
                                         d_t, ctx)
        ctx.update_generator(terms["loss"])
        terms.update(objective.update_discriminator(image, target, d_t, ctx))
        flags = torch.tensor([n, uncond, zero_motion, zero_pose], dtype=torch.float32)
        return {**{k: v.detach().cpu() for k, v in terms.items()}, "unroll": flags[0], "uncond": flags[1],
                "zero_motion": flags[2], "zero_pose": flags[3]}
