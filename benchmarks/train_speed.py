"""Training speed of each stage: samples per second and peak memory of the training step.

``python -m benchmarks.train_speed [--stage stage1|stage2|stage3] [--preset tiny|official] [--device auto|cpu|cuda]
[--gradient-checkpointing] [--no-decoder-checkpointing]``

What is timed: the stage's step exactly as training runs it (`personalive_cli.training.stage1.Stage1` /
`stage2.Stage2` / `stage3.Stage3`: the frozen networks' forward passes, the trained networks, the loss, backward,
gradient clipping and the AdamW updates, the discriminator's included), on synthetic batches of the preset's
shapes and random weights of its architecture (``tiny``: `PersonaLiveConfig.tiny`; ``official``/``paper``: the
released SD-1.5-sized networks and the 512² StyleGAN2 discriminator). Speed does not depend on the weights'
values or the pixels; LPIPS runs on a random VGG trunk for the same reason (no file needed). Conditioning dropout
is off, so every step runs every network (the slowest case), and the adversarial term and discriminator updates
are on from the first step (the recipe starts them later: Stage II at 3000/5000). Stage II draws its unroll
n ~ U{1..4} per step as training does, so its figure is the mean over the timed steps (its median otherwise).
A Stage III "sample" is one sequence (40 frames by default: 7 windows, 3 graded with 16 decoded frames each).
No data loading, no checkpoints, no validation: the figure is the compute ceiling of a run.

``--warmup`` steps are untimed; then ``--steps`` steps are timed one by one (synchronised on CUDA);
samples/s = batch / median step time. Peak memory: CUDA: ``torch.cuda.max_memory_allocated`` over the
timed steps; CPU: the process's peak resident set size during build and run (psutil) minus the RSS before
the build (`benchmarks.speed` samples it the same way).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import torch

from personalive_cli.training.config import TrainConfig
from personalive_cli.training.stage import StepContext

STAGES = ("stage1", "stage2", "stage3")


@dataclasses.dataclass
class TrainSpeedOptions:
    stage: str = "stage1"
    preset: str = "tiny"
    device: str = "auto"
    mixed_precision: str = "auto"  # auto: fp16 on CUDA, no on CPU
    batch_size: int | None = None  # default: the preset's
    size: int | None = None  # default: the preset's
    gradient_checkpointing: bool = False
    decoder_checkpointing: bool = True  # Stage III's VAE-decoder checkpointing (the recipe's)
    sequence_frames: int | None = None  # Stage III; default: the preset's
    warmup: int = 1
    steps: int = 5
    seed: int = 0


def synthetic_batch(batch: int, size: int, pose_size: int, face_size: int, clip_size: int,
                    generator: torch.Generator) -> dict:
    """A batch with the dataset's keys, shapes and value ranges (masks: a centred face with eyes and mouth)."""
    def img(s, lo=-1.0):
        x = torch.rand(batch, 3, s, s, generator=generator)
        return x * 2 - 1 if lo < 0 else x

    face = torch.zeros(batch, 1, size, size)
    face[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    local = torch.zeros(batch, 1, size, size)
    local[..., 3 * size // 8: size // 2, 3 * size // 8: 5 * size // 8] = 1
    return {"reference": img(size), "target": img(size), "target_pose": img(pose_size, 0.0),
            "target_face": img(face_size), "clip_image": torch.randn(batch, 3, clip_size, clip_size, generator=generator),
            "face_mask": face, "local_mask": local}


def synthetic_sequence(batch: int, frames: int, size: int, pose_size: int, face_size: int, clip_size: int,
                       generator: torch.Generator) -> dict:
    """A Stage III batch (the video dataset's keys): per-frame tensors (b, n, ...) and one reference."""
    per_frame = [synthetic_batch(batch, size, pose_size, face_size, clip_size, generator) for _ in range(frames)]

    def stack(key):
        return torch.stack([f[key] for f in per_frame], dim=1)

    return {"reference": per_frame[0]["reference"], "clip_image": per_frame[0]["clip_image"],
            "frames": stack("target"), "poses": stack("target_pose"), "faces": stack("target_face"),
            "face_masks": stack("face_mask"), "local_masks": stack("local_mask")}


class _Updates:
    """The runner's update protocol (``personalive_cli.training.stage.Updater``) for a single process, with
    fp16 loss scaling (one scaler per optimiser)."""

    training = True

    def __init__(self, params, optimizer, discriminator, d_optimizer, max_grad_norm: float, fp16: bool, device):
        self.params, self.optimizer = params, optimizer
        self.discriminator, self.d_optimizer, self.max_grad_norm = discriminator, d_optimizer, max_grad_norm
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        self.d_scaler = torch.amp.GradScaler(device.type, enabled=fp16)

    def parallel(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def _update(self, loss, scaler, optimizer, params) -> None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def update_generator(self, loss) -> None:
        self._update(loss, self.scaler, self.optimizer, self.params)

    def discriminate(self, fake, real, timesteps):
        return self.discriminator(fake.detach(), timesteps), self.discriminator(real, timesteps), None

    def update_discriminator(self, loss) -> None:
        self._update(loss, self.d_scaler, self.d_optimizer, list(self.discriminator.parameters()))


def _stage(name: str):
    from personalive_cli.training.stage1 import Stage1
    from personalive_cli.training.stage2 import Stage2
    from personalive_cli.training.stage3 import Stage3

    return {"stage1": Stage1, "stage2": Stage2, "stage3": Stage3}[name]()


def measure(opts: TrainSpeedOptions) -> dict:
    from personalive_cli.devices import resolve_device
    from personalive_cli.errors import UserError
    from personalive_cli.pipeline.components import PersonaLiveConfig, PersonaLiveModels

    device = resolve_device(opts.device)
    if opts.stage not in STAGES:
        raise UserError(f"unknown stage {opts.stage!r}; choose one of {', '.join(STAGES)}")
    config = TrainConfig.preset(opts.preset, opts.stage)
    changes = {"uncond_ratio": 0.0, "zero_motion_ratio": 0.0, "zero_pose_ratio": 0.0, "lpips_vgg": "random",
               "adversarial_after": -1, "discriminator_after": -1, "optimizer": "adamw",
               "decoder_checkpointing": opts.decoder_checkpointing}
    if opts.sequence_frames:
        changes["sequence_frames"] = opts.sequence_frames
    if opts.batch_size:
        changes["batch_size"] = opts.batch_size
    if opts.size:
        changes["size"] = opts.size
    config = config.updated(changes, "benchmark")
    precision = opts.mixed_precision
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "no"
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    cuda = device.type == "cuda"
    rss = None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        from benchmarks.speed import _RSSPeak

        rss = _RSSPeak().__enter__()
    try:
        arch = PersonaLiveConfig.tiny() if opts.preset == "tiny" else PersonaLiveConfig()
        models = PersonaLiveModels.random(arch, seed=opts.seed).to(device)
        stage = _stage(opts.stage)
        stage.setup(config)
        stage.configure(models)
        if amp_dtype is not None and cuda:
            models.vae.to(dtype=amp_dtype)
            models.image_encoder.to(dtype=amp_dtype)
        if opts.gradient_checkpointing:
            models.denoising_unet.enable_gradient_checkpointing()
            models.reference_unet.enable_gradient_checkpointing()
        params = stage.trainable_parameters(models)
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        discriminator = d_optimizer = None
        if stage.uses_discriminator(config):
            from personalive_cli.training.init import initial_discriminator

            discriminator = initial_discriminator(config).to(device)
            d_optimizer = torch.optim.AdamW(discriminator.parameters(),
                                            lr=config.discriminator_lr_scale * config.learning_rate,
                                            weight_decay=config.weight_decay)
        updates = _Updates(params, optimizer, discriminator, d_optimizer, config.max_grad_norm, precision == "fp16",
                           device)
        generator = torch.Generator().manual_seed(opts.seed)
        shapes = (config.size, config.pose_size, models.motion_encoder.config.image_size,
                  models.image_encoder.config.image_size)
        if opts.stage == "stage3":
            batch = synthetic_sequence(config.batch_size, config.sequence_frames, *shapes, generator)
        else:
            batch = synthetic_batch(config.batch_size, *shapes, generator)
        batch = {k: v.to(device) for k, v in batch.items()}
        times = []
        for i in range(opts.warmup + opts.steps):
            if i == opts.warmup and cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            # A self-updating stage (II, III) steps its optimisers itself through the context; Stage I's loss is
            # stepped here, the same way.
            ctx = StepContext(step=i, micro_step=i, generator=torch.Generator().manual_seed(i), device=device,
                              config=config, updater=updates if stage.updates_itself else None)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = stage.training_step(models, batch, ctx)
            if not stage.updates_itself:
                updates.update_generator(out["loss"])
            if cuda:
                torch.cuda.synchronize(device)
            if i >= opts.warmup:
                times.append(time.perf_counter() - t0)
        peak = (torch.cuda.max_memory_allocated(device) - base) if cuda else None
    finally:
        if rss is not None:
            rss.__exit__(None, None, None)
    if rss is not None:
        peak = rss.peak - rss.base
    step = statistics.mean(times) if opts.stage == "stage2" else statistics.median(times)
    return {"stage": opts.stage, "preset": opts.preset, "device": str(device), "mixed_precision": precision,
            "size": config.size, "batch_size": config.batch_size,
            "sequence_frames": config.sequence_frames if opts.stage == "stage3" else None,
            "gradient_checkpointing": opts.gradient_checkpointing,
            "decoder_checkpointing": opts.decoder_checkpointing if opts.stage == "stage3" else None,
            "trainable_parameters": sum(p.numel() for p in params), "steps": opts.steps,
            "step_s": step, "samples_per_s": config.batch_size / step,
            "peak_mem_GiB": peak / 2**30, "mem_kind": "cuda max allocated" if cuda else "process RSS increase",
            "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="stage1", choices=list(STAGES))
    p.add_argument("--preset", default="tiny", choices=["tiny", "official", "paper"])
    p.add_argument("--device", default="auto")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "fp16", "bf16"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--no-decoder-checkpointing", action="store_true", help="Stage III without the recipe's VAE-"
                                                                          "decoder gradient checkpointing")
    p.add_argument("--sequence-frames", type=int, help="Stage III frames per sequence (default: the preset's)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the row as JSON")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from personalive_cli.errors import UserError

    try:
        row = measure(TrainSpeedOptions(stage=a.stage, preset=a.preset, device=a.device,
                                        decoder_checkpointing=not a.no_decoder_checkpointing,
                                        sequence_frames=a.sequence_frames, mixed_precision=a.mixed_precision,
                                        batch_size=a.batch_size, size=a.size,
                                        gradient_checkpointing=a.gradient_checkpointing, warmup=a.warmup,
                                        steps=a.steps))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(row, indent=2))
    else:
        what = "mean" if row["stage"] == "stage2" else "median"
        decoder = "" if row["decoder_checkpointing"] is None else \
            f", decoder checkpointing {'on' if row['decoder_checkpointing'] else 'off'}"
        unit = f"sequences of {row['sequence_frames']} frames" if row["stage"] == "stage3" else "samples"
        print(f"{row['stage']} {row['preset']} {row['size']}² batch {row['batch_size']} on {row['device']} "
              f"({row['mixed_precision']}, checkpointing {'on' if row['gradient_checkpointing'] else 'off'}{decoder}): "
              f"{row['samples_per_s']:.3f} {unit}/s ({row['step_s']:.3f} s/step, {what} of {row['steps']}), "
              f"peak memory {row['peak_mem_GiB']:.2f} GiB ({row['mem_kind']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
