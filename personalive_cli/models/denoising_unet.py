"""The denoising UNet: an SD-1.5 UNet inflated over frames (spec §1.5, §2, §2.1).

Frames are folded into the batch everywhere: a tensor (b, c, f, h, w) travels as (b*f, c, h, w), frame
index fastest. Per-frame ("inflated") GroupNorm is then plain GroupNorm, per-frame convolutions are plain
2-D convolutions, and a per-frame time embedding (b*f, 1280) drives diffusers' `ResnetBlock2D` directly.
Only the **temporal modules** look across the fold: self-attention over the f frames of each pixel, with
the sinusoidal position encoding added after the LayerNorm (position p = frame p along f, so position 0 is
the first = oldest, least noisy frame of the window). The **motion modules** are per-frame cross-attention
to that frame's own 32 motion tokens (width 16).

Every layer of every block runs `resnet -> spatial transformer (if the block has one) -> motion module ->
temporal module`; the mid block runs `resnet0 -> transformer -> motion -> temporal -> resnet1`. Skips are
stored after the temporal module and after each downsampler, as in SD.

Spatial self-attention ("reference attention"): each frame's queries are its LayerNorm1 tokens; its
keys/values are `[to_k(LN1(x)); K_bank]`, `[to_v(LN1(x)); V_bank]`, where the bank K/V come from
`DenoisingUNet.bank_kv()` (the reference UNet's LayerNorm1 tokens projected once with *this* UNet's attn1
`to_k`/`to_v`). Projecting the bank once and reusing it for every frame and every step is exact: the
official code projects the same tokens with the same weights for each frame.

Building blocks reused from diffusers: `ResnetBlock2D`, `Downsample2D`, `Upsample2D`, `Timesteps`,
`TimestepEmbedding`, `BasicTransformerBlock` (its submodules; the forward is ours because of the bank),
`Attention` (as the q/k/v/out projection container), `FeedForward` (GEGLU). The attention maths itself
is `torch.nn.functional.scaled_dot_product_attention`, or xformers when asked for.

State dict: exactly the union of the official `denoising_unet.pth` (2-D SD part + 21 motion modules) and
`temporal_module.pth` (21 temporal modules, with their `pos_encoder.pe` buffers). The `pe` buffers are
persistent (so `state_dict()` matches the released files key for key), but loading tolerates their
absence: a missing `pe` is regenerated from its closed form instead of being reported as missing.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock, FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn

__all__ = [
    "ATTENTION_BACKENDS",
    "DenoisingUNet",
    "DenoisingUNetConfig",
    "MotionModule",
    "SpatialTransformer",
    "SpatialTransformerBlock",
    "TemporalModule",
    "fold_frames",
    "unfold_frames",
]

ATTENTION_BACKENDS = ("sdpa", "xformers")

_CROSS_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock3D")
_PLAIN_DOWN = ("DownBlock2D", "DownBlock3D")
_CROSS_UP = ("CrossAttnUpBlock2D", "CrossAttnUpBlock3D")
_PLAIN_UP = ("UpBlock2D", "UpBlock3D")


# ----------------------------------------------------------------------------------------------------------
# configuration


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
            if t not in _CROSS_DOWN + _PLAIN_DOWN:
                raise ValueError(f"unsupported down block type {t!r}")
        for t in self.up_block_types:
            if t not in _CROSS_UP + _PLAIN_UP:
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

    def replace(self, **changes) -> DenoisingUNetConfig:
        return replace(self, **changes)


# ----------------------------------------------------------------------------------------------------------
# helpers


def fold_frames(x: torch.Tensor) -> torch.Tensor:
    """(b, c, f, h, w) -> (b*f, c, h, w), frame index fastest."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def unfold_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(b*f, c, h, w) -> (b, c, f, h, w)."""
    bf, c, h, w = x.shape
    return x.reshape(bf // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)


def _check_backend(name: str) -> str:
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {ATTENTION_BACKENDS}")
    if name == "xformers" and importlib.util.find_spec("xformers") is None:
        raise RuntimeError(
            "attention backend 'xformers' was requested but xformers is not installed "
            "(pip install 'personalive[gpu]' or use the default 'sdpa')"
        )
    return name


def _attend(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """Multi-head attention on projected q (B, Lq, C), k/v (B, Lk, C), then `attn.to_out`."""
    batch, lq, inner = q.shape
    heads = attn.heads
    d = inner // heads
    if backend == "xformers":
        import xformers.ops as xops

        out = xops.memory_efficient_attention(
            q.reshape(batch, lq, heads, d),
            k.reshape(batch, -1, heads, d),
            v.reshape(batch, -1, heads, d),
            scale=attn.scale,
        ).reshape(batch, lq, inner)
    else:
        out = F.scaled_dot_product_attention(
            q.reshape(batch, lq, heads, d).transpose(1, 2),
            k.reshape(batch, -1, heads, d).transpose(1, 2),
            v.reshape(batch, -1, heads, d).transpose(1, 2),
            scale=attn.scale,
        )
        out = out.transpose(1, 2).reshape(batch, lq, inner)
    for layer in attn.to_out:  # Linear, Dropout
        out = layer(out)
    return out


def _expand_bank(t: torch.Tensor, batch: int, num_frames: int) -> torch.Tensor:
    """Bank K or V (1 or b, L, C) -> (b*f, L, C) (a broadcast view when the leading dim is 1)."""
    if t.shape[0] == 1:
        return t.expand(batch * num_frames, -1, -1)
    if t.shape[0] == batch:
        return t.repeat_interleave(num_frames, dim=0)
    raise ValueError(f"bank K/V batch {t.shape[0]} matches neither 1 nor the sample batch {batch}")


@dataclass
class _Cond:
    """What every layer of one UNet pass may need (frames folded: b*f rows)."""

    context: torch.Tensor  # (b*f, Lc, cross_attention_dim)
    num_frames: int
    backend: str = "sdpa"
    motion: torch.Tensor | None = None  # (b*f, num_motion_tokens, motion_token_dim)
    bank_kv: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    bank_out: dict[str, torch.Tensor] | None = None


# ----------------------------------------------------------------------------------------------------------
# spatial transformer (SD's Transformer2DModel with one BasicTransformerBlock, bank-aware)


class SpatialTransformerBlock(BasicTransformerBlock):
    """diffusers `BasicTransformerBlock` (same submodules and keys) with reference-attention forward.

    `block_name` is this block's module path inside its UNet; banks are paired by it.
    """

    block_name: str = ""

    def __init__(self, dim: int, heads: int, cross_attention_dim: int) -> None:
        super().__init__(
            dim,
            heads,
            dim // heads,
            cross_attention_dim=cross_attention_dim,
            activation_fn="geglu",
            attention_bias=False,
        )

    def forward(self, x: torch.Tensor, cond: _Cond) -> torch.Tensor:  # type: ignore[override]
        """x: tokens (b*f, h*w, C) -> (b*f, h*w, C)."""
        n = self.norm1(x)
        if cond.bank_out is not None:
            cond.bank_out[self.block_name] = n
        attn = self.attn1
        q, k, v = attn.to_q(n), attn.to_k(n), attn.to_v(n)
        bank = cond.bank_kv.get(self.block_name) if cond.bank_kv is not None else None
        if bank is not None:
            kb, vb = bank
            batch = x.shape[0] // cond.num_frames
            k = torch.cat([k, _expand_bank(kb.to(k.dtype), batch, cond.num_frames)], dim=1)
            v = torch.cat([v, _expand_bank(vb.to(v.dtype), batch, cond.num_frames)], dim=1)
        x = _attend(attn, q, k, v, cond.backend) + x

        n = self.norm2(x)
        ctx = cond.context.to(n.dtype)
        x = _attend(self.attn2, self.attn2.to_q(n), self.attn2.to_k(ctx), self.attn2.to_v(ctx), cond.backend) + x

        return self.ff(self.norm3(x)) + x

    def project_bank(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bank tokens (n, L, C) (LayerNorm1 outputs of the reference UNet) -> (K, V) with this attn1."""
        tokens = tokens.to(self.attn1.to_k.weight.dtype)
        return self.attn1.to_k(tokens), self.attn1.to_v(tokens)


class SpatialTransformer(nn.Module):
    """GroupNorm -> 1x1 conv proj_in -> one SpatialTransformerBlock -> 1x1 conv proj_out -> + input.

    Keys as diffusers' SD `Transformer2DModel` (use_linear_projection False): norm, proj_in,
    transformer_blocks.0.*, proj_out.
    """

    def __init__(self, channels: int, cfg: DenoisingUNetConfig) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(cfg.norm_num_groups, channels, eps=cfg.transformer_norm_eps, affine=True)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [SpatialTransformerBlock(channels, cfg.attention_heads, cfg.cross_attention_dim)]
        )
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        bf, c, h, w = x.shape
        return self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(bf, h * w, c)

    def forward(self, x: torch.Tensor, cond: _Cond) -> torch.Tensor:
        """x: (b*f, C, h, w) -> (b*f, C, h, w)."""
        bf, c, h, w = x.shape
        t = self._tokens(x)
        for block in self.transformer_blocks:
            t = block(t, cond)
        t = t.reshape(bf, h, w, c).permute(0, 3, 1, 2)
        return self.proj_out(t) + x

    def bank_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Only the bank of this (single-block) transformer: LayerNorm1 of its tokens, (b, h*w, C)."""
        return self.transformer_blocks[0].norm1(self._tokens(x))


# ----------------------------------------------------------------------------------------------------------
# motion and temporal modules (AnimateDiff-style "Vanilla" modules)


class PositionalEncoding(nn.Module):
    """Interleaved sinusoidal table `pe` (1, max_len, C): pe[p, 2i] = sin(p w_i), pe[p, 2i+1] = cos(p w_i),
    w_i = 10000^(-2i/C). Persistent buffer; when a state dict lacks it, it is regenerated, not missing."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.register_buffer("pe", self.table(dim, max_len), persistent=True)

    @staticmethod
    def table(dim: int, max_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        position = torch.arange(max_len, dtype=torch.float32, device=device)[:, None]
        freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim, device=device)
        pe[0, :, 0::2] = torch.sin(position * freq)
        pe[0, :, 1::2] = torch.cos(position * freq)
        return pe

    def reset_table(self) -> None:
        """Recompute `pe` in place (or on CPU if it lives on the meta device)."""
        device = self.pe.device if self.pe.device.type != "meta" else torch.device("cpu")
        dtype = self.pe.dtype
        self.pe = self.table(self.dim, self.max_len, device=device).to(dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        key = prefix + "pe"
        if key in missing_keys:
            missing_keys.remove(key)
            if self.pe.device.type == "meta":
                self.reset_table()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, f, C) -> x + pe[:f]."""
        f = x.shape[1]
        if f > self.max_len:
            raise ValueError(f"{f} frames exceed the temporal position table ({self.max_len})")
        return x + self.pe[:, :f].to(x.dtype)


class TemporalAttention(Attention):
    """diffusers `Attention` (q/k/v/out) plus the temporal `pos_encoder` (keys `...pos_encoder.pe`)."""

    def __init__(self, dim: int, heads: int, max_len: int) -> None:
        super().__init__(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False)
        self.pos_encoder = PositionalEncoding(dim, max_len)


class _FrameTransformerBlock(nn.Module):
    """attention_blocks.{0,1} with norms.{0,1}, then GEGLU ff with ff_norm (pre-norm, residual each)."""

    def __init__(self, attention_blocks: list[Attention], dim: int) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList(attention_blocks)
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in attention_blocks])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)


class _FrameTransformer(nn.Module):
    """The `temporal_transformer` of a Vanilla module: GroupNorm, Linear proj_in, blocks, Linear proj_out."""

    def __init__(self, dim: int, block: _FrameTransformerBlock, cfg: DenoisingUNetConfig) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(cfg.norm_num_groups, dim, eps=cfg.transformer_norm_eps, affine=True)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList([block])
        self.proj_out = nn.Linear(dim, dim)
        if cfg.zero_init_modules:
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)


class _VanillaModule(nn.Module):
    """Shared wrapper of the motion and temporal modules; subclasses say how an attention block mixes
    tokens (``_mix``: per-frame cross-attention to motion tokens, or self-attention across frames)."""

    temporal_transformer: _FrameTransformer
    _mix: Callable[[Attention, torch.Tensor, _Cond], torch.Tensor]

    def forward(self, x: torch.Tensor, cond: _Cond) -> torch.Tensor:
        """x: (b*f, C, h, w) -> (b*f, C, h, w)."""
        tt = self.temporal_transformer
        bf, c, h, w = x.shape
        t = tt.proj_in(tt.norm(x).permute(0, 2, 3, 1).reshape(bf, h * w, c))
        for block in tt.transformer_blocks:
            for attn, norm in zip(block.attention_blocks, block.norms, strict=True):
                t = self._mix(attn, norm(t), cond) + t
            t = block.ff(block.ff_norm(t)) + t
        t = tt.proj_out(t).reshape(bf, h, w, c).permute(0, 3, 1, 2)
        return t + x


class MotionModule(_VanillaModule):
    """Per-frame cross-attention to that frame's motion tokens (2 attention blocks + FF). No frame mixing."""

    def __init__(self, dim: int, cfg: DenoisingUNetConfig) -> None:
        super().__init__()
        heads = cfg.motion_heads
        attns = [
            Attention(query_dim=dim, cross_attention_dim=cfg.motion_token_dim, heads=heads, dim_head=dim // heads)
            for _ in range(2)
        ]
        self.temporal_transformer = _FrameTransformer(dim, _FrameTransformerBlock(attns, dim), cfg)

    def _mix(self, attn: Attention, n: torch.Tensor, cond: _Cond) -> torch.Tensor:
        if cond.motion is None:
            raise ValueError("the motion modules need motion tokens")
        m = cond.motion.to(n.dtype)
        return _attend(attn, attn.to_q(n), attn.to_k(m), attn.to_v(m), cond.backend)


class TemporalModule(_VanillaModule):
    """Self-attention across the f frames of each pixel (2 attention blocks with PE + FF)."""

    def __init__(self, dim: int, cfg: DenoisingUNetConfig) -> None:
        super().__init__()
        attns = [TemporalAttention(dim, cfg.temporal_heads, cfg.temporal_max_len) for _ in range(2)]
        self.temporal_transformer = _FrameTransformer(dim, _FrameTransformerBlock(attns, dim), cfg)

    def _mix(self, attn: TemporalAttention, n: torch.Tensor, cond: _Cond) -> torch.Tensor:
        f = cond.num_frames
        bf, hw, c = n.shape
        b = bf // f
        s = n.reshape(b, f, hw, c).transpose(1, 2).reshape(b * hw, f, c)
        s = attn.pos_encoder(s)
        out = _attend(attn, attn.to_q(s), attn.to_k(s), attn.to_v(s), cond.backend)
        return out.reshape(b, hw, f, c).transpose(1, 2).reshape(bf, hw, c)


# ----------------------------------------------------------------------------------------------------------
# UNet blocks (shared by the denoising UNet, video=True, and the reference UNet, video=False)


class _Block(nn.Module):
    resnets: nn.ModuleList
    attentions: nn.ModuleList | None
    motion_modules: nn.ModuleList | None
    temporal_modules: nn.ModuleList | None

    def _add_layers(self, widths: list[tuple[int, int]], n: int, cross: bool, cfg: DenoisingUNetConfig,
                    video: bool) -> None:
        """ResnetBlock2D per (in, out) width; n attention / motion / temporal layers (width = out)."""
        out_ch = widths[0][1]
        if cross:
            self.attentions = nn.ModuleList([SpatialTransformer(out_ch, cfg) for _ in range(n)])
        else:
            self.attentions = None
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(
                    in_channels=i, out_channels=o, temb_channels=cfg.time_embed_dim, eps=cfg.norm_eps,
                    groups=cfg.norm_num_groups,
                )
                for i, o in widths
            ]
        )
        if video:
            self.motion_modules = nn.ModuleList([MotionModule(out_ch, cfg) for _ in range(n)])
            self.temporal_modules = nn.ModuleList([TemporalModule(out_ch, cfg) for _ in range(n)])
        else:
            self.motion_modules = None
            self.temporal_modules = None

    def _after_resnet(self, j: int, h: torch.Tensor, cond: _Cond) -> torch.Tensor:
        if self.attentions is not None:
            h = self.attentions[j](h, cond)
        if self.motion_modules is not None:
            h = self.motion_modules[j](h, cond)
        if self.temporal_modules is not None:
            h = self.temporal_modules[j](h, cond)
        return h


class DownBlock(_Block):
    def __init__(self, in_ch: int, out_ch: int, cross: bool, add_downsample: bool, cfg: DenoisingUNetConfig,
                 video: bool) -> None:
        super().__init__()
        widths = [(in_ch if j == 0 else out_ch, out_ch) for j in range(cfg.layers_per_block)]
        self._add_layers(widths, len(widths), cross, cfg, video)
        self.downsamplers = (
            nn.ModuleList(
                [Downsample2D(out_ch, use_conv=True, out_channels=out_ch, padding=cfg.downsample_padding, name="op")]
            )
            if add_downsample
            else None
        )

    def forward(self, h: torch.Tensor, temb: torch.Tensor, cond: _Cond) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for j, resnet in enumerate(self.resnets):
            h = self._after_resnet(j, resnet(h, temb), cond)
            skips.append(h)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                h = down(h)
            skips.append(h)
        return h, skips


class MidBlock(_Block):
    def __init__(self, ch: int, cfg: DenoisingUNetConfig, video: bool) -> None:
        super().__init__()
        self._add_layers([(ch, ch), (ch, ch)], 1, True, cfg, video)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, cond: _Cond) -> torch.Tensor:
        h = self.resnets[0](h, temb)
        for j, resnet in enumerate(self.resnets[1:]):
            h = resnet(self._after_resnet(j, h, cond), temb)
        return h


class UpBlock(_Block):
    def __init__(self, prev_ch: int, out_ch: int, skip_in_ch: int, cross: bool, add_upsample: bool,
                 cfg: DenoisingUNetConfig, video: bool) -> None:
        super().__init__()
        n = cfg.layers_per_block + 1
        widths = [
            ((prev_ch if j == 0 else out_ch) + (skip_in_ch if j == n - 1 else out_ch), out_ch) for j in range(n)
        ]
        self._add_layers(widths, len(widths), cross, cfg, video)
        self.upsamplers = (
            nn.ModuleList([Upsample2D(out_ch, use_conv=True, out_channels=out_ch)]) if add_upsample else None
        )

    def upsample(self, h: torch.Tensor, next_skip: torch.Tensor | None) -> torch.Tensor:
        if self.upsamplers is None:
            return h
        size = None
        if next_skip is not None and tuple(next_skip.shape[-2:]) != (2 * h.shape[-2], 2 * h.shape[-1]):
            size = tuple(next_skip.shape[-2:])  # odd latent sizes: match the skip like SD does
        for up in self.upsamplers:
            h = up(h, size)
        return h

    def forward(self, h: torch.Tensor, temb: torch.Tensor, skips: list[torch.Tensor], cond: _Cond) -> torch.Tensor:
        """Consumes its skips from the end of `skips` (popped in place)."""
        for j, resnet in enumerate(self.resnets):
            h = resnet(torch.cat([h, skips.pop()], dim=1), temb)
            h = self._after_resnet(j, h, cond)
        return self.upsample(h, skips[-1] if skips else None)


def _build_body(module: nn.Module, cfg: DenoisingUNetConfig, video: bool) -> None:
    """conv_in, time_proj, time_embedding, down_blocks, mid_block, up_blocks (SD-1.5 layout)."""
    widths = tuple(cfg.block_out_channels)
    module.conv_in = nn.Conv2d(cfg.in_channels, widths[0], kernel_size=3, padding=1)
    module.time_proj = Timesteps(widths[0], cfg.flip_sin_to_cos, cfg.freq_shift)
    module.time_embedding = TimestepEmbedding(widths[0], cfg.time_embed_dim)
    down = []
    out_ch = widths[0]
    for i, kind in enumerate(cfg.down_block_types):
        in_ch, out_ch = out_ch, widths[i]
        down.append(DownBlock(in_ch, out_ch, kind in _CROSS_DOWN, i < len(widths) - 1, cfg, video))
    module.down_blocks = nn.ModuleList(down)
    module.mid_block = MidBlock(widths[-1], cfg, video)
    rev = list(reversed(widths))
    up = []
    out_ch = rev[0]
    for i, kind in enumerate(cfg.up_block_types):
        prev_ch, out_ch = out_ch, rev[i]
        skip_in = rev[min(i + 1, len(rev) - 1)]
        up.append(UpBlock(prev_ch, out_ch, skip_in, kind in _CROSS_UP, i < len(rev) - 1, cfg, video))
    module.up_blocks = nn.ModuleList(up)
    for name, m in module.named_modules():
        if isinstance(m, SpatialTransformerBlock):
            m.block_name = name


def _block_names(module: nn.Module) -> list[str]:
    """Spatial transformer block names in execution order: down blocks, mid block, up blocks."""
    names = [n for n, m in module.named_modules() if isinstance(m, SpatialTransformerBlock)]
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(names, key=lambda n: (order[n.split(".")[0]], names.index(n)))


def _time_embedding(module: nn.Module, timesteps: torch.Tensor | float | int, rows: int, batch: int,
                    device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Timesteps -> (rows, time_embed_dim). Accepts a scalar, (rows,) or (rows // batch,) (repeated per b)."""
    t = torch.as_tensor(timesteps, device=device)
    t = t.reshape(-1)
    if t.numel() == 1:
        t = t.expand(rows)
    elif t.numel() != rows:
        if batch > 1 and t.numel() * batch == rows:
            t = t.repeat(batch)
        else:
            raise ValueError(f"got {t.numel()} timesteps for {rows} frames")
    return module.time_embedding(module.time_proj(t).to(dtype))


class _UNetBase(nn.Module):
    """What both UNets share once ``_build_body`` has run: dtype/device, the attention backend and the
    names of the spatial transformer blocks (identical in both, so banks pair by name)."""

    def _finish_build(self) -> None:
        self.attention_backend = "sdpa"
        self._block_names = tuple(_block_names(self))

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def set_attention_backend(self, name: str) -> None:
        """"sdpa" (default, any device) or "xformers" (CUDA; RuntimeError if it is not installed)."""
        self.attention_backend = _check_backend(name)

    def attention_block_names(self) -> list[str]:
        """Module paths of the spatial transformer blocks (= bank names), e.g.
        "down_blocks.0.attentions.0.transformer_blocks.0"; order: down, mid, up."""
        return list(self._block_names)


# ----------------------------------------------------------------------------------------------------------
# the denoising UNet


class DenoisingUNet(_UNetBase):
    """eps = DenoisingUNet(sample, timesteps, clip_embeds, motion_tokens, pose_features, bank_kv).

    See the module docstring for the structure. State-dict keys equal the official files' (spec §2.1).
    """

    def __init__(self, config: DenoisingUNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DenoisingUNetConfig()
        _build_body(self, cfg, video=True)
        c0 = cfg.block_out_channels[0]
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, c0, eps=cfg.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(c0, cfg.out_channels, kernel_size=3, padding=1)
        self._finish_build()

    def bank_kv(self, banks: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Project reference banks once: {name: (n, L, C) LN1 tokens} -> {name: (K, V)}, each (n, L, C).

        Uses each block's attn1.to_k / to_v. Concatenating the results of several references (reference +
        keyframes) along the token axis equals projecting the concatenated tokens.
        """
        out = {}
        for name, tokens in banks.items():
            block = self.get_submodule(name)
            if not isinstance(block, SpatialTransformerBlock):
                raise KeyError(f"{name!r} is not a spatial transformer block")
            out[name] = block.project_bank(tokens)
        return out

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor | float | int,
        clip_embeds: torch.Tensor,
        motion_tokens: torch.Tensor,
        pose_features: torch.Tensor | None = None,
        bank_kv: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Predict the noise.

        sample: (b, 4, f, h, w) noisy latents. timesteps: per frame, (f,) (shared by the batch) or (b*f,)
        in (b, f) order; a scalar is broadcast. clip_embeds: (b, n, cross_attention_dim) (n = 1: CLIP
        image embedding). motion_tokens: (b, f, 32, 16). pose_features: (b, C0, f, h, w) added right after
        conv_in, or None. bank_kv: {block name: (K, V)} from `bank_kv()`, each (1 or b, L, C); blocks not
        in the dict (or bank_kv None) use plain self-attention. Returns eps (b, 4, f, h, w).
        """
        b, _, f, h, w = sample.shape
        bf = b * f
        dtype = self.dtype
        if bank_kv:
            unknown = set(bank_kv) - set(self._block_names)
            if unknown:
                raise KeyError(f"bank_kv has unknown block names: {sorted(unknown)}")
        if motion_tokens.shape[:2] != (b, f):
            raise ValueError(f"motion_tokens {tuple(motion_tokens.shape)} do not match (b, f) = {(b, f)}")
        cond = _Cond(
            context=clip_embeds.to(dtype).repeat_interleave(f, dim=0),
            num_frames=f,
            backend=self.attention_backend,
            motion=motion_tokens.reshape(bf, *motion_tokens.shape[2:]).to(dtype),
            bank_kv=bank_kv,
        )
        temb = _time_embedding(self, timesteps, bf, b, sample.device, dtype)

        x = self.conv_in(fold_frames(sample.to(dtype)))
        if pose_features is not None:
            x = x + fold_frames(pose_features.to(dtype))

        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, temb, cond)
            skips.extend(s)
        x = self.mid_block(x, temb, cond)
        for block in self.up_blocks:
            x = block(x, temb, skips, cond)

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return unfold_frames(x, f)
