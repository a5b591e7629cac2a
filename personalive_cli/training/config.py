"""Training configuration: one flat dataclass, presets, YAML files and ``KEY=VALUE`` overrides.

Resolution order (later wins): the preset (``official`` by default), a YAML file (``--config``), then
command-line overrides (``--set KEY=VALUE`` and the dedicated flags such as ``--max-steps``). Unknown keys
and values of the wrong type are errors, never silently ignored. The resolved config is written into the
run folder (``config.yaml``) and is what ``--resume`` continues with.

Presets:

* ``official`` — the released recipe ([T], ``configs/train/personalive_stage1.yaml``): 50K steps, batch 8
  per process at 512², AdamW lr 1e-5 (constant), weight decay 1e-2, grad-clip 1.0, fp16 on CUDA, seed
  12580; validation every 1000 steps.
* ``paper`` — the paper's schedule ([P]): 30K steps at a global batch of 32 (per-process batch 8; the
  gradient accumulation follows from the number of processes: 4 GPUs → 1, 1 GPU → 4).
* ``tiny`` — the tiny random-weight architecture (`PersonaLiveConfig.tiny`) at 64² for smoke tests and
  the CPU benchmark; not a useful model.

Each preset depends on the stage (`TrainConfig.preset(name, stage)`): Stage II's official recipe is 50K steps
of batch 4 with 8-bit AdamW, the adversarial term after step 3000 and discriminator updates after step 5000;
Stage III's is 10K iterations of one 40-frame sequence, 8-bit AdamW, the adversarial term from the start and
discriminator updates after iteration 50, validation every 200 and checkpoints every 1000.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from personalive_cli.errors import UserError

PRESETS = ("official", "paper", "tiny")
STAGES = ("stage1", "stage2", "stage3")
TEMPORAL_ATTENTION = ("bidirectional", "chunk_causal")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
TRACKERS = ("tensorboard", "none")
# What a resumed run may change without breaking "continues where it stopped" (schedule and bookkeeping).
RESUMABLE_CHANGES = ("max_steps", "checkpoint_every", "keep_checkpoints", "validate_every", "validation_frames",
                     "validation_samples", "log_every", "num_workers", "log_with")


@dataclass
class TrainConfig:
    """Every setting of a training run. Defaults = the official Stage-I recipe."""

    # --- schedule
    max_steps: int = 50_000
    batch_size: int = 8  # per process and micro-step (the official train_bs)
    # If set, the effective batch per optimiser step; gradient accumulation = global / (batch_size x processes).
    global_batch_size: int | None = None
    gradient_accumulation_steps: int = 1  # used when global_batch_size is not set
    # --- data
    size: int = 512  # training resolution (square), a multiple of 64
    pose_size: int = 256  # the keypoint extractor's input
    margin: int = 30  # reference/target frames at least this far apart (clips longer than 64 frames)
    augment: bool = True  # the motion-encoder crop augmentation
    num_workers: int = 4  # data-loader worker processes (0: in the training process)
    dataset: str | None = None  # module:Class of the dataset (default: the stage's own; a custom one takes its arguments)
    # --- optimiser
    learning_rate: float = 1e-5  # constant
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"  # adamw | adamw8bit (needs bitsandbytes)
    mixed_precision: str = "auto"  # auto (fp16 on CUDA, no on CPU) | no | fp16 | bf16
    gradient_checkpointing: bool = False
    # --- Stage-I recipe
    noise_offset: float = 0.05
    uncond_ratio: float = 0.1  # skip the reference path (CLIP embedding kept)
    zero_motion_ratio: float = 0.1
    zero_pose_ratio: float = 0.1
    bank_drop_ratio: float = 0.3  # reference-bank tokens dropped, re-drawn every step
    # --- Stage II / III recipe (the generator loss: pixel MSE + face-region MSE + lpips_weight x LPIPS-VGG
    # + adversarial_weight x softplus(-D(x, t)); training.md §6-7)
    lpips_weight: float = 2.0
    lpips_vgg: str | None = None  # vgg16-397923af.pth (None: torch hub's cache); "random": untrained trunk (tests)
    gan: bool = True  # false: the "no GAN" ablation (MSE + LPIPS only, no discriminator at all)
    adversarial_weight: float = 0.05
    adversarial_after: int = 3000  # the generator's adversarial term once more than this many steps are done
    discriminator_after: int = 5000  # discriminator updates once more than this many steps are done
    discriminator_init: str | None = None  # FFHQ-512 StyleGAN2 D (.pth) or a D folder; None: random / the init run's
    discriminator_lr_scale: float = 2.0  # the discriminator's learning rate = this x learning_rate
    discriminator_channels: int = 32768  # StyleGAN2 channel_base (width at resolution r: base / r, at most 512)
    r1_gamma: float = 0.0  # R1 penalty weight on real images (the official code has none)
    unroll_max: int = 4  # Stage II: n ~ U{1..unroll_max} passes down the ladder 999 / 666 / 333 / 0
    # --- Stage III
    sequence_frames: int = 40  # frames per sequence (a multiple of 4, at least 16)
    frame_stride: int = 4  # source frames between sequence frames
    sliding: bool = True  # false: the "no sliding training" ablation (every window built from ground truth)
    temporal_attention: str = "bidirectional"  # or chunk_causal (the paper's ablation)
    decoder_checkpointing: bool = True  # Stage III decodes 16 frames with gradients: checkpoint the VAE decoder
    # --- initialisation
    init: str | None = None  # weights folder (official layout, X-NeMo-style files, or SD image-variations)
    random_init: str | None = None  # "tiny": seeded random tiny networks (smoke tests, benchmarks)
    # --- bookkeeping
    seed: int = 12580
    checkpoint_every: int = 2000
    keep_checkpoints: int = 2  # the newest N checkpoints are kept
    validate_every: int = 1000  # validation strip every N steps (0: never)
    validation_clip: str | None = None  # clip id (default: the first clip of the manifest)
    validation_frames: int = 4  # generated frames per strip (a multiple of 4)
    validation_samples: int = 4  # fixed samples of the validation loss (0: none)
    log_every: int = 1  # metrics.csv / TensorBoard row every N steps
    log_with: str = "tensorboard"  # tensorboard | none

    # ------------------------------------------------------------------------------------------ presets

    @classmethod
    def preset(cls, name: str, stage: str = "stage1") -> TrainConfig:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        if name not in PRESETS:
            raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        base = {"stage1": {},
                "stage2": dict(batch_size=4, optimizer="adamw8bit", checkpoint_every=10_000),
                "stage3": dict(max_steps=10_000, batch_size=1, optimizer="adamw8bit", adversarial_after=-1,
                               discriminator_after=50, validate_every=200, checkpoint_every=1000,
                               validation_samples=1)}[stage]
        if name == "paper":
            # The paper's batch 32 on 8 GPUs (Stage III: one sequence on each of 8 GPUs, 10K iterations).
            base.update({"stage1": dict(max_steps=30_000, global_batch_size=32),
                         "stage2": dict(max_steps=30_000, global_batch_size=32),
                         "stage3": dict(global_batch_size=8)}[stage])
        if name == "tiny":
            # Random tiny networks learn visibly only at a higher rate than the recipe's fine-tuning 1e-5.
            base.update(max_steps=40, batch_size=1, size=64, pose_size=64, num_workers=0, random_init="tiny",
                        learning_rate=1e-3, checkpoint_every=20, validate_every=20, log_every=1, optimizer="adamw",
                        lpips_vgg="random", discriminator_channels=512)
            if stage != "stage1":
                base.update(adversarial_after=-1, discriminator_after=-1, sequence_frames=24)
        return cls(**base)

    # ------------------------------------------------------------------------------------------ overrides

    def updated(self, values: dict, source: str) -> TrainConfig:
        """A copy with ``values`` applied; unknown keys and wrong types are one-line errors naming ``source``."""
        known = {f.name: f for f in fields(self)}
        unknown = sorted(str(k) for k in values if k not in known)
        if unknown:
            raise UserError(f"{source}: unknown config key {unknown[0]!r}"
                            f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}; "
                            f"known keys: {', '.join(known)}")
        hints = typing.get_type_hints(type(self))
        changes = {k: _coerce(v, hints[k], f"{source}: {k}") for k, v in values.items()}
        out = dataclasses.replace(self, **changes)
        out.validate()
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Values that are well-typed but cannot work."""
        checks = [
            (self.max_steps >= 1, "max_steps must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.global_batch_size is None or self.global_batch_size >= 1, "global_batch_size must be at least 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be at least 1"),
            (self.size >= 64 and self.size % 64 == 0, f"size must be a multiple of 64, got {self.size}"),
            (self.pose_size >= 32, f"pose_size must be at least 32, got {self.pose_size}"),
            (self.num_workers >= 0, "num_workers must be 0 or more"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (self.max_grad_norm > 0, "max_grad_norm must be positive"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}"),
            (self.log_with in TRACKERS, f"log_with must be one of {', '.join(TRACKERS)}"),
            (self.random_init in (None, "tiny"), "random_init must be 'tiny' or empty"),
            (self.checkpoint_every >= 1, "checkpoint_every must be at least 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1"),
            (self.validate_every >= 0, "validate_every must be 0 (never) or more"),
            (self.validation_frames >= 4 and self.validation_frames % 4 == 0,
             "validation_frames must be a positive multiple of 4"),
            (self.validation_samples >= 0, "validation_samples must be 0 or more"),
            (self.log_every >= 1, "log_every must be at least 1"),
            (self.dataset is None or ":" in self.dataset, "dataset must be module:Class"),
            (self.lpips_weight >= 0, "lpips_weight must be 0 or more"),
            (self.adversarial_weight >= 0, "adversarial_weight must be 0 or more"),
            (self.discriminator_lr_scale > 0, "discriminator_lr_scale must be positive"),
            (self.discriminator_channels >= 16, "discriminator_channels must be at least 16"),
            (self.r1_gamma >= 0, "r1_gamma must be 0 or more"),
            (1 <= self.unroll_max <= 4, f"unroll_max must be 1 to 4 (the ladder has 4 rungs), got {self.unroll_max}"),
            (self.sequence_frames >= 16 and self.sequence_frames % 4 == 0,
             f"sequence_frames must be a multiple of 4 of at least 16 (one window), got {self.sequence_frames}"),
            (self.frame_stride >= 1, "frame_stride must be at least 1"),
            (self.temporal_attention in TEMPORAL_ATTENTION,
             f"temporal_attention must be one of {', '.join(TEMPORAL_ATTENTION)}"),
        ]
        for name in ("uncond_ratio", "zero_motion_ratio", "zero_pose_ratio"):
            value = getattr(self, name)
            checks.append((0 <= value <= 1, f"{name} must be in [0, 1], got {value}"))
        checks.append((0 <= self.bank_drop_ratio < 1, f"bank_drop_ratio must be in [0, 1), got {self.bank_drop_ratio}"))
        for ok, why in checks:
            if not ok:
                raise UserError(f"bad config: {why}")

    def accumulation_steps(self, num_processes: int) -> int:
        """Micro-steps per optimiser step; with ``global_batch_size``, it must divide exactly."""
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps
        per_step = self.batch_size * num_processes
        if self.global_batch_size % per_step:
            raise UserError(f"global_batch_size {self.global_batch_size} is not a multiple of batch_size "
                            f"{self.batch_size} x {num_processes} process(es) = {per_step}; change --set batch_size "
                            "or the number of processes")
        return self.global_batch_size // per_step


def _coerce(value, hint, where: str):
    """``value`` (from YAML or a KEY=VALUE string already parsed as YAML) as type ``hint``."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where} must be a string, got {value!r}")
    raise TypeError(f"unsupported config type {hint}")


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from ``path``; one-line errors for a missing file, bad YAML or a non-mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read config {path}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of key: value")
    return data


def parse_overrides(items: list[str]) -> dict:
    """``["key=value", ...]`` -> {key: value}, values parsed as YAML scalars (``1e-4``, ``true``, ``null``)."""
    import yaml

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def write_yaml(path: Path, config: TrainConfig) -> None:
    import yaml

    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def resolve_config(preset: str = "official", file: str | Path | None = None, overrides: dict | None = None,
                   stage: str = "stage1") -> TrainConfig:
    """The stage's preset, then the YAML file, then the overrides."""
    config = TrainConfig.preset(preset, stage)
    if file is not None:
        config = config.updated(read_yaml(file), str(file))
    if overrides:
        config = config.updated(overrides, "command line")
    config.validate()
    return config
