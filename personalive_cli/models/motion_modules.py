"""Motion and temporal modules of the denoising UNet (AnimateDiff-style "Vanilla" modules, spec §2.1).

Both work on frames folded into the batch, x (b*f, C, h, w), frame index fastest:

* `MotionModule`: per-frame cross-attention to that frame's own motion tokens (b*f, 32, 16). No mixing
  across frames.
* `TemporalModule`: self-attention over the f frames of each pixel, with a sinusoidal position encoding
  added after the LayerNorm (position p = frame p of the window, 0 = the oldest, least noisy frame).

Why these are written here and not taken from diffusers: their state-dict keys are the official release's
(``temporal_transformer.{norm,proj_in,proj_out}``, ``transformer_blocks.0.attention_blocks.{0,1}``,
``norms.{0,1}``, ``ff``, ``ff_norm``, ``attention_blocks.*.pos_encoder.pe``), which diffusers'
`TransformerTemporalModel` / `AnimateDiffTransformer3D` do not have (one attention with ``attn1``/``attn2``
and a ``pos_embed`` without a persisted table). The pieces inside are diffusers' own: `Attention` with the
model's attention processor, `FeedForward` (GEGLU).
"""

from __future__ import annotations

import math

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

__all__ = [
    "FrameTransformer",
    "FrameTransformerBlock",
    "MotionModule",
    "PositionalEncoding",
    "TemporalAttention",
    "TemporalModule",
]


class PositionalEncoding(nn.Module):
    """Interleaved sinusoidal table `pe` (1, max_len, C): pe[p, 2i] = sin(p w_i), pe[p, 2i+1] = cos(p w_i),
    w_i = 10000^(-2i/C). Persistent buffer (it is in the official `temporal_module.pth`); when a state dict
    lacks it, it is regenerated, not reported missing.

    Interleaved, unlike diffusers' sin-cos helpers (all sines, then all cosines): the released weights were
    trained against this layout, and the table is read from the checkpoint when present.
    """

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
    """diffusers `Attention` (q/k/v/out, its processor) plus the temporal `pos_encoder` (keys
    `...pos_encoder.pe`). The encoding is applied by `TemporalModule` before calling the attention."""

    def __init__(self, dim: int, heads: int, max_len: int) -> None:
        super().__init__(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False)
        self.pos_encoder = PositionalEncoding(dim, max_len)


class FrameTransformerBlock(nn.Module):
    """attention_blocks.{0,1} with norms.{0,1}, then GEGLU ff with ff_norm (pre-norm, residual each)."""

    def __init__(self, attention_blocks: list[Attention], dim: int) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList(attention_blocks)
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in attention_blocks])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)


class FrameTransformer(nn.Module):
    """The `temporal_transformer` of a Vanilla module: GroupNorm, Linear proj_in, blocks, Linear proj_out.

    ``zero_init``: proj_out starts at zero, so a new module is an identity (the official training init).
    """

    def __init__(self, dim: int, block: FrameTransformerBlock, groups: int, eps: float, zero_init: bool) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim, eps=eps, affine=True)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList([block])
        self.proj_out = nn.Linear(dim, dim)
        if zero_init:
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def run(self, x: torch.Tensor, mix) -> torch.Tensor:  # noqa: ANN001 - (Attention, tokens) -> tokens
        """x (b*f, C, h, w) -> x + proj_out(blocks(proj_in(norm(x)))); ``mix(attn, tokens (b*f, h*w, C))``
        is how one attention block mixes the LayerNorm-ed tokens."""
        bf, c, h, w = x.shape
        t = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(bf, h * w, c))
        for block in self.transformer_blocks:
            for attn, norm in zip(block.attention_blocks, block.norms, strict=True):
                t = mix(attn, norm(t)) + t
            t = block.ff(block.ff_norm(t)) + t
        t = self.proj_out(t).reshape(bf, h, w, c).permute(0, 3, 1, 2)
        return t + x


class MotionModule(nn.Module):
    """Per-frame cross-attention to that frame's motion tokens (2 attention blocks + FF). No frame mixing."""

    def __init__(self, dim: int, heads: int, token_dim: int, groups: int, eps: float, zero_init: bool) -> None:
        super().__init__()
        attns = [Attention(query_dim=dim, cross_attention_dim=token_dim, heads=heads, dim_head=dim // heads)
                 for _ in range(2)]
        self.temporal_transformer = FrameTransformer(dim, FrameTransformerBlock(attns, dim), groups, eps, zero_init)

    def forward(self, x: torch.Tensor, motion_tokens: torch.Tensor) -> torch.Tensor:
        """x (b*f, C, h, w), motion_tokens (b*f, L, token_dim) -> (b*f, C, h, w)."""
        def mix(attn: Attention, n: torch.Tensor) -> torch.Tensor:
            return attn(n, encoder_hidden_states=motion_tokens.to(n.dtype))

        return self.temporal_transformer.run(x, mix)


class TemporalModule(nn.Module):
    """Self-attention across the f frames of each pixel (2 attention blocks with PE + FF)."""

    def __init__(self, dim: int, heads: int, max_len: int, groups: int, eps: float, zero_init: bool) -> None:
        super().__init__()
        attns = [TemporalAttention(dim, heads, max_len) for _ in range(2)]
        self.temporal_transformer = FrameTransformer(dim, FrameTransformerBlock(attns, dim), groups, eps, zero_init)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x (b*f, C, h, w) with f = num_frames -> (b*f, C, h, w)."""
        f = num_frames

        def mix(attn: TemporalAttention, n: torch.Tensor) -> torch.Tensor:
            bf, hw, c = n.shape
            b = bf // f
            s = attn.pos_encoder(n.reshape(b, f, hw, c).transpose(1, 2).reshape(b * hw, f, c))
            return attn(s).reshape(b, hw, f, c).transpose(1, 2).reshape(bf, hw, c)

        return self.temporal_transformer.run(x, mix)
