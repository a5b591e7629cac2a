"""The denoising UNet: an SD-1.5 UNet inflated over frames (spec §1.5, §2, §2.1).

Frames are folded into the batch (see `unet_blocks`): the 2-D part is SD's, run per frame with a per-frame
timestep; the **motion modules** cross-attend each frame to its own 32 motion tokens; the **temporal
modules** attend across the f frames of each pixel (see `motion_modules`).

Spatial self-attention ("reference attention"): each frame's queries are its LayerNorm1 tokens; its
keys/values are ``[to_k(LN1(x)); K_bank]``, ``[to_v(LN1(x)); V_bank]``, where the bank K/V come from
`DenoisingUNet.bank_kv()` (the reference UNet's LayerNorm1 tokens projected once with *this* UNet's attn1
``to_k`` / ``to_v``) and are read by the attention processor (`attention_processor`). Projecting the bank
once and reusing it for every frame and every step is exact: the official code projects the same tokens
with the same weights for each frame.

The model is a diffusers model (``ModelMixin``, ``ConfigMixin``): ``from_pretrained`` / ``save_pretrained``
in diffusers' format, ``enable_gradient_checkpointing``, ``set_attn_processor``. `DenoisingUNetConfig` is
the same architecture as data (what ``PersonaLiveConfig`` stores, with validation and the SD config
reader); ``DenoisingUNet(cfg)`` and ``DenoisingUNet.from_config(cfg.to_dict())`` are the same model.

State dict: exactly the union of the official `denoising_unet.pth` (2-D SD part + 21 motion modules) and
`temporal_module.pth` (21 temporal modules, with their `pos_encoder.pe` buffers). The `pe` buffers are
persistent (so `state_dict()` matches the released files key for key), but loading tolerates their
absence: a missing `pe` is regenerated from its closed form instead of being reported as missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from personalive_cli.models.attention_processor import (
    ATTENTION_BACKENDS,
    AttentionProcessorMixin,
    ReferenceKV,
    reads_reference_kv,
)
from personalive_cli.models.modeling_utils import (
    PersonaLiveModelMixin,
    accepts_config_dataclass,
    dataclass_from_config,
)
from personalive_cli.models.unet_blocks import (
    CROSS_DOWN_BLOCKS,
    CROSS_UP_BLOCKS,
    PLAIN_DOWN_BLOCKS,
    PLAIN_UP_BLOCKS,
    UNetConditioning,
    build_unet_body,
    fold_frames,
    spatial_block_names,
    time_embedding,
    unfold_frames,
)

__all__ = [
    "ATTENTION_BACKENDS",
    "DenoisingUNet",
    "DenoisingUNetConfig",
    "UNetBase",
]

# Fields of DenoisingUNetConfig that only the video (denoising) UNet uses.
_VIDEO_FIELDS = ("motion_token_dim", "num_motion_tokens", "motion_heads", "temporal_heads", "temporal_max_len",
                 "zero_init_modules")


@dataclass(frozen=True)
class DenoisingUNetConfig:
    """Architecture of both UNets. Defaults = the released model (SD image-variations unet + stage 3).

    The reference UNet uses the same config and ignores the motion/temporal fields.
    """

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    layers_per_block: int = 2
    # Number of heads of the spatial attention (SD's `attention_head_dim: 8` means 8 heads).
    attention_heads: int = 8
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    # GroupNorm eps of the spatial transformers and of the motion/temporal modules.
    transformer_norm_eps: float = 1e-6
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    downsample_padding: int = 1
    # Motion modules: per-frame cross-attention to `num_motion_tokens` tokens of width `motion_token_dim`.
    motion_token_dim: int = 16
    num_motion_tokens: int = 32
    motion_heads: int = 8
    # Temporal modules: self-attention over frames with a sinusoidal PE table of `temporal_max_len` rows.
    temporal_heads: int = 8
    temporal_max_len: int = 32
    # Zero-initialise proj_out of new motion/temporal modules (the official training init: they start as
    # identities). Checkpoints overwrite it; tests turn it off so that random weights exercise every path.
    zero_init_modules: bool = True

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError("down_block_types / up_block_types need one entry per block_out_channels width")
        for t in self.down_block_types:
            if t not in CROSS_DOWN_BLOCKS + PLAIN_DOWN_BLOCKS:
                raise ValueError(f"unsupported down block type {t!r}")
        for t in self.up_block_types:
            if t not in CROSS_UP_BLOCKS + PLAIN_UP_BLOCKS:
                raise ValueError(f"unsupported up block type {t!r}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"width {c} is not divisible by norm_num_groups={self.norm_num_groups}")
            for heads in (self.attention_heads, self.motion_heads, self.temporal_heads):
                if c % heads:
                    raise ValueError(f"width {c} is not divisible by {heads} heads")
            if c % 2:
                raise ValueError("widths must be even (sin/cos position encoding)")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @classmethod
    def tiny(cls, **overrides) -> DenoisingUNetConfig:
        """Same code paths with a few channels (for tests): widths (32, 64, 64, 64), 8 groups, 2 heads."""
        kwargs = dict(
            block_out_channels=(32, 64, 64, 64),
            norm_num_groups=8,
            attention_heads=2,
            motion_heads=2,
            temporal_heads=2,
            zero_init_modules=False,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_sd_unet_config(cls, path: str | Path, **overrides) -> DenoisingUNetConfig:
        """Read a diffusers SD `unet/config.json` (e.g. sd-image-variations) and add the stage-3 defaults.

        Raises ValueError for SD options this implementation does not support.
        """
        raw = json.loads(Path(path).read_text())
        return cls.from_sd_unet_dict(raw, **overrides)

    @classmethod
    def from_sd_unet_dict(cls, raw: Mapping, **overrides) -> DenoisingUNetConfig:
        unsupported = {
            "act_fn": "silu",
            "center_input_sample": False,
            "mid_block_scale_factor": 1,
            "use_linear_projection": False,
            "class_embed_type": None,
            "num_class_embeds": None,
            "addition_embed_type": None,
            "upcast_attention": False,
            "only_cross_attention": False,
            "dual_cross_attention": False,
            "resnet_time_scale_shift": "default",
            "time_embedding_type": "positional",
            "encoder_hid_dim": None,
            "transformer_layers_per_block": 1,
            "num_attention_heads": None,
            "mid_block_type": "UNetMidBlock2DCrossAttn",
        }
        for key, expected in unsupported.items():
            if key in raw and raw[key] != expected:
                raise ValueError(f"unsupported SD unet option {key}={raw[key]!r} (need {expected!r})")
        heads = raw.get("attention_head_dim", 8)
        if not isinstance(heads, int):
            if len(set(heads)) != 1:
                raise ValueError(f"per-block attention_head_dim {heads!r} is not supported")
            heads = heads[0]
        kwargs = dict(
            in_channels=raw.get("in_channels", 4),
            out_channels=raw.get("out_channels", 4),
            block_out_channels=tuple(raw.get("block_out_channels", (320, 640, 1280, 1280))),
            down_block_types=tuple(raw.get("down_block_types", cls.down_block_types)),
            up_block_types=tuple(raw.get("up_block_types", cls.up_block_types)),
            layers_per_block=raw.get("layers_per_block", 2),
            attention_heads=heads,
            cross_attention_dim=raw.get("cross_attention_dim", 768),
            norm_num_groups=raw.get("norm_num_groups", 32),
            norm_eps=raw.get("norm_eps", 1e-5),
            flip_sin_to_cos=raw.get("flip_sin_to_cos", True),
            freq_shift=raw.get("freq_shift", 0),
            downsample_padding=raw.get("downsample_padding", 1),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def spatial_dict(self) -> dict:
        """The fields the reference UNet takes (everything but the motion/temporal modules')."""
        return {k: v for k, v in self.to_dict().items() if k not in _VIDEO_FIELDS}

    def replace(self, **changes) -> DenoisingUNetConfig:
        return replace(self, **changes)


class UNetBase(PersonaLiveModelMixin, AttentionProcessorMixin, ModelMixin, ConfigMixin):
    """What both UNets share: the diffusers model mixins, attention processors and the names of the spatial
    transformer blocks (identical in both, so banks pair by name)."""

    def build_body(self, cfg: DenoisingUNetConfig, video: bool) -> None:
        """Build the SD-1.5 body on this model (called once by the subclass ``__init__``): conv_in, time
        embedding, down/mid/up blocks (with motion/temporal modules if ``video``), then the SDPA processors."""
        build_unet_body(self, cfg, video)
        self._block_names = tuple(spatial_block_names(self))
        self.set_attention_backend("sdpa")

    # ModelMixin's dtype/device walk every submodule (looking for casting hooks) on each access; these are
    # read on every forward of a real-time stream, so they come from conv_in directly.
    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def encode(self, x: torch.Tensor, temb: torch.Tensor, cond) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The down path and the mid block: ``conv_in`` output (n, C, h, w) → mid features and the
        skips the up path pops, shared by both UNets (the reference UNet's up path stops early)."""
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, temb, cond)
            skips.extend(s)
        return self.mid_block(x, temb, cond), skips

    def attention_block_names(self) -> list[str]:
        """Module paths of the spatial transformer blocks (= bank names), e.g.
        "down_blocks.0.attentions.0.transformer_blocks.0"; order: down, mid, up."""
        return list(self._block_names)


class DenoisingUNet(UNetBase):
    """eps = DenoisingUNet(sample, timesteps, clip_embeds, motion_tokens, pose_features, bank_kv).

    See the module docstring for the structure. Arguments: the fields of `DenoisingUNetConfig` (or one
    `DenoisingUNetConfig`). State-dict keys equal the official files' (spec §2.1).
    """

    @accepts_config_dataclass(DenoisingUNetConfig)
    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block: int = 2,
        attention_heads: int = 8,
        cross_attention_dim: int = 768,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        transformer_norm_eps: float = 1e-6,
        flip_sin_to_cos: bool = True,
        freq_shift: float = 0.0,
        downsample_padding: int = 1,
        motion_token_dim: int = 16,
        num_motion_tokens: int = 32,
        motion_heads: int = 8,
        temporal_heads: int = 8,
        temporal_max_len: int = 32,
        zero_init_modules: bool = True,
    ) -> None:
        super().__init__()
        cfg = dataclass_from_config(DenoisingUNetConfig, self.config)
        self.register_to_config(**cfg.to_dict())  # JSON lists back to tuples
        self.build_body(cfg, video=True)
        c0 = cfg.block_out_channels[0]
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, c0, eps=cfg.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(c0, cfg.out_channels, kernel_size=3, padding=1)

    def reference_attention_names(self) -> list[str]:
        """The self-attention (attn1) of every spatial transformer block."""
        return [f"{name}.attn1" for name in self._block_names]

    def bank_kv(self, banks: Mapping[str, torch.Tensor]) -> dict[str, ReferenceKV]:
        """Project reference banks once: {name: (n, L, C) LN1 tokens} -> {name: (K, V)}, each (n, L, C).

        Uses each block's attn1.to_k / to_v. Concatenating the results of several references (reference +
        keyframes) along the token axis equals projecting the concatenated tokens.
        """
        out = {}
        for name, tokens in banks.items():
            if name not in self._block_names:
                raise KeyError(f"{name!r} is not a spatial transformer block")
            attn = self.get_submodule(name).attn1
            tokens = tokens.to(attn.to_k.weight.dtype)
            out[name] = (attn.to_k(tokens), attn.to_v(tokens))
        return out

    def set_temporal_attention(self, mode: str) -> None:
        """"bidirectional" (PersonaLive: every frame of the window sees every other) or "chunk_causal" (the
        paper's ablation, `ChunkCausalAttnProcessor`): the processor of every temporal attention layer."""
        from diffusers.models.attention_processor import AttnProcessor2_0

        from personalive_cli.models.attention_processor import ChunkCausalAttnProcessor
        from personalive_cli.models.motion_modules import TemporalAttention

        if mode not in ("bidirectional", "chunk_causal"):
            raise ValueError(f"unknown temporal attention {mode!r}; choose bidirectional or chunk_causal")
        processor = ChunkCausalAttnProcessor() if mode == "chunk_causal" else AttnProcessor2_0()
        for module in self.modules():
            if isinstance(module, TemporalAttention):
                module.set_processor(processor)

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor | float | int,
        clip_embeds: torch.Tensor,
        motion_tokens: torch.Tensor,
        pose_features: torch.Tensor | None = None,
        bank_kv: Mapping[str, ReferenceKV] | None = None,
        temporal: bool = True,
    ) -> torch.Tensor:
        """Predict the noise.

        sample: (b, 4, f, h, w) noisy latents. timesteps: per frame, (f,) (shared by the batch) or (b*f,)
        in (b, f) order; a scalar is broadcast. clip_embeds: (b, n, cross_attention_dim) (n = 1: CLIP
        image embedding). motion_tokens: (b, f, 32, 16). pose_features: (b, C0, f, h, w) added right after
        conv_in, or None. bank_kv: {block name: (K, V)} from `bank_kv()`, each (1 or b, L, C); blocks not
        in the dict (or bank_kv None) use plain self-attention. temporal: False skips the temporal modules
        (the single-frame UNet of training Stages I and II; their weights are then unused). Returns eps
        (b, 4, f, h, w).
        """
        b, _, f, h, w = sample.shape
        bf = b * f
        dtype = self.dtype
        if bank_kv:
            unknown = set(bank_kv) - set(self._block_names)
            if unknown:
                raise KeyError(f"bank_kv has unknown block names: {sorted(unknown)}")
            ignored = [n for n in bank_kv if not reads_reference_kv(self.get_submodule(n).attn1)]
            if ignored:
                raise ValueError(f"bank_kv given, but the attention processor of {ignored[0]}.attn1 does not read "
                                 "reference K/V (use set_attention_backend, or a reference processor)")
        if motion_tokens.shape[:2] != (b, f):
            raise ValueError(f"motion_tokens {tuple(motion_tokens.shape)} do not match (b, f) = {(b, f)}")
        cond = UNetConditioning(
            context=clip_embeds.to(dtype).repeat_interleave(f, dim=0),
            num_frames=f,
            motion=motion_tokens.reshape(bf, *motion_tokens.shape[2:]).to(dtype),
            reference_kv=bank_kv,
            temporal=temporal,
        )
        temb = time_embedding(self, timesteps, bf, b, sample.device, dtype)

        x = self.conv_in(fold_frames(sample.to(dtype)))
        if pose_features is not None:
            x = x + fold_frames(pose_features.to(dtype))

        x, skips = self.encode(x, temb, cond)
        for block in self.up_blocks:
            x = block(x, temb, skips, cond)

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return unfold_frames(x, f)
