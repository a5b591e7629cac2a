"""UNet blocks shared by the denoising UNet (video) and the reference UNet (2-D), SD-1.5 layout.

Frames are folded into the batch everywhere: a tensor (b, c, f, h, w) travels as (b*f, c, h, w), frame
index fastest. Per-frame ("inflated") GroupNorm is then plain GroupNorm, per-frame convolutions are plain
2-D convolutions, and a per-frame time embedding (b*f, 1280) drives diffusers' `ResnetBlock2D` directly.

Every layer of every block runs ``resnet -> spatial transformer (if the block has one) -> motion module ->
temporal module`` (the last two only in the video UNet); the mid block runs ``resnet0 -> transformer ->
motion -> temporal -> resnet1``. Skips are stored after the temporal module and after each downsampler, as
in SD. The spatial transformer is diffusers' stock `Transformer2DModel` (one `BasicTransformerBlock`);
its self-attention reads the reference K/V bound for the call (see `attention_processor`).

What diffusers' own `CrossAttnDownBlock2D` & co. cannot give: the motion/temporal modules between the
layers (with the official key names), per-layer reference K/V, and the reference UNet's early stop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers import Transformer2DModel
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn

from personalive_cli.models.attention_processor import ReferenceKV, bind_reference_kv
from personalive_cli.models.modeling_utils import CheckpointedModule
from personalive_cli.models.motion_modules import MotionModule, TemporalModule

if TYPE_CHECKING:
    from personalive_cli.models.denoising_unet import DenoisingUNetConfig

__all__ = [
    "CROSS_DOWN_BLOCKS",
    "CROSS_UP_BLOCKS",
    "PLAIN_DOWN_BLOCKS",
    "PLAIN_UP_BLOCKS",
    "DownBlock",
    "MidBlock",
    "UNetConditioning",
    "UpBlock",
    "bank_tokens",
    "build_unet_body",
    "fold_frames",
    "spatial_block_names",
    "time_embedding",
    "unfold_frames",
]

CROSS_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "CrossAttnDownBlock3D")
PLAIN_DOWN_BLOCKS = ("DownBlock2D", "DownBlock3D")
CROSS_UP_BLOCKS = ("CrossAttnUpBlock2D", "CrossAttnUpBlock3D")
PLAIN_UP_BLOCKS = ("UpBlock2D", "UpBlock3D")


def fold_frames(x: torch.Tensor) -> torch.Tensor:
    """(b, c, f, h, w) -> (b*f, c, h, w), frame index fastest."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def unfold_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(b*f, c, h, w) -> (b, c, f, h, w)."""
    bf, c, h, w = x.shape
    return x.reshape(bf // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)


@dataclass
class UNetConditioning:
    """What every layer of one UNet pass may need (frames folded: b*f rows)."""

    context: torch.Tensor  # (b*f, Lc, cross_attention_dim): the CLIP image embedding per frame
    num_frames: int
    motion: torch.Tensor | None = None  # (b*f, num_motion_tokens, motion_token_dim)
    reference_kv: Mapping[str, ReferenceKV] | None = None  # {spatial block name: (K, V)}, each (1 or b, L, C)
    # False: skip the temporal modules (Stage I/II train single frames without them; the official
    # stage-1/2 UNet does not build them). Motion modules always run.
    temporal: bool = True


def bank_tokens(transformer: Transformer2DModel, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm1 tokens of the (single) block of ``transformer`` for input x (n, C, h, w): (n, h*w, C).

    The same operations as the first half of the stock forward (norm, conv proj_in, flatten, norm1), for
    the reference UNet's last bank, where nothing after it is needed.
    """
    n, c, h, w = x.shape
    t = transformer.proj_in(transformer.norm(x)).permute(0, 2, 3, 1).reshape(n, h * w, c)
    return transformer.transformer_blocks[0].norm1(t)


def _spatial_transformer(channels: int, cfg: DenoisingUNetConfig) -> Transformer2DModel:
    """SD's spatial transformer (keys norm, proj_in, transformer_blocks.0.*, proj_out)."""
    heads = cfg.attention_heads
    transformer = Transformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=channels // heads,
        in_channels=channels,
        num_layers=1,
        cross_attention_dim=cfg.cross_attention_dim,
        norm_num_groups=cfg.norm_num_groups,
        use_linear_projection=False,
    )
    transformer.norm.eps = cfg.transformer_norm_eps  # Transformer2DModel fixes 1e-6 (= SD's value)
    return transformer


class _Block(CheckpointedModule):
    """Resnets and, per layer, optional spatial transformer / motion module / temporal module.

    ``bank_names[j]``: the module path of layer j's transformer block inside its UNet (reference K/V are
    paired by it), set by `build_unet_body`. Gradient checkpointing recomputes one layer at a time.
    """

    resnets: nn.ModuleList
    attentions: nn.ModuleList | None
    motion_modules: nn.ModuleList | None
    temporal_modules: nn.ModuleList | None

    def _add_layers(self, widths: list[tuple[int, int]], n: int, cross: bool, cfg: DenoisingUNetConfig,
                    video: bool) -> None:
        """ResnetBlock2D per (in, out) width; n attention / motion / temporal layers (width = out)."""
        out_ch = widths[0][1]
        self.attentions = nn.ModuleList([_spatial_transformer(out_ch, cfg) for _ in range(n)]) if cross else None
        self.bank_names: list[str] = []
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
            groups, eps, zero = cfg.norm_num_groups, cfg.transformer_norm_eps, cfg.zero_init_modules
            self.motion_modules = nn.ModuleList(
                [MotionModule(out_ch, cfg.motion_heads, cfg.motion_token_dim, groups, eps, zero) for _ in range(n)]
            )
            self.temporal_modules = nn.ModuleList(
                [TemporalModule(out_ch, cfg.temporal_heads, cfg.temporal_max_len, groups, eps, zero) for _ in range(n)]
            )
        else:
            self.motion_modules = None
            self.temporal_modules = None

    def after_resnet(self, j: int, h: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        """Layer j's spatial transformer, motion module and temporal module (those the block has)."""
        if self.attentions is not None:
            transformer = self.attentions[j]
            kv = cond.reference_kv.get(self.bank_names[j]) if cond.reference_kv else None
            bind = (bind_reference_kv(transformer.transformer_blocks[0].attn1, kv) if kv is not None
                    else contextlib.nullcontext())
            with bind:
                h = transformer(h, encoder_hidden_states=cond.context.to(h.dtype), return_dict=False)[0]
        if self.motion_modules is not None:
            if cond.motion is None:
                raise ValueError("the motion modules need motion tokens")
            h = self.motion_modules[j](h, cond.motion)
        if self.temporal_modules is not None and cond.temporal:
            h = self.temporal_modules[j](h, cond.num_frames)
        return h

    def layer(self, j: int, h: torch.Tensor, temb: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        """resnet j, then `after_resnet` (checkpointed as one unit)."""
        return self.after_resnet(j, self.resnets[j](h, temb), cond)


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

    def forward(self, h: torch.Tensor, temb: torch.Tensor, cond: UNetConditioning,
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """h (b*f, C_in, h, w) -> (output, skips)."""
        skips = []
        for j in range(len(self.resnets)):
            h = self.checkpointed(self.layer, j, h, temb, cond)
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

    def _mid(self, h: torch.Tensor, temb: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        h = self.resnets[0](h, temb)
        for j, resnet in enumerate(self.resnets[1:]):
            h = resnet(self.after_resnet(j, h, cond), temb)
        return h

    def forward(self, h: torch.Tensor, temb: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        return self.checkpointed(self._mid, h, temb, cond)


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

    def forward(self, h: torch.Tensor, temb: torch.Tensor, skips: list[torch.Tensor],
                cond: UNetConditioning) -> torch.Tensor:
        """Consumes its skips from the end of `skips` (popped in place)."""
        for j in range(len(self.resnets)):
            h = self.checkpointed(self.layer, j, torch.cat([h, skips.pop()], dim=1), temb, cond)
        return self.upsample(h, skips[-1] if skips else None)


def build_unet_body(module: nn.Module, cfg: DenoisingUNetConfig, video: bool) -> None:
    """conv_in, time_proj, time_embedding, down_blocks, mid_block, up_blocks (SD-1.5 layout) on ``module``."""
    widths = tuple(cfg.block_out_channels)
    module.conv_in = nn.Conv2d(cfg.in_channels, widths[0], kernel_size=3, padding=1)
    module.time_proj = Timesteps(widths[0], cfg.flip_sin_to_cos, cfg.freq_shift)
    module.time_embedding = TimestepEmbedding(widths[0], cfg.time_embed_dim)
    down = []
    out_ch = widths[0]
    for i, kind in enumerate(cfg.down_block_types):
        in_ch, out_ch = out_ch, widths[i]
        down.append(DownBlock(in_ch, out_ch, kind in CROSS_DOWN_BLOCKS, i < len(widths) - 1, cfg, video))
    module.down_blocks = nn.ModuleList(down)
    module.mid_block = MidBlock(widths[-1], cfg, video)
    rev = list(reversed(widths))
    up = []
    out_ch = rev[0]
    for i, kind in enumerate(cfg.up_block_types):
        prev_ch, out_ch = out_ch, rev[i]
        skip_in = rev[min(i + 1, len(rev) - 1)]
        up.append(UpBlock(prev_ch, out_ch, skip_in, kind in CROSS_UP_BLOCKS, i < len(rev) - 1, cfg, video))
    module.up_blocks = nn.ModuleList(up)
    for name, block in module.named_modules():
        if isinstance(block, _Block) and block.attentions is not None:
            block.bank_names = [f"{name}.attentions.{j}.transformer_blocks.0" for j in range(len(block.attentions))]


def spatial_block_names(module: nn.Module) -> list[str]:
    """Spatial transformer block names (= bank names) in execution order: down blocks, mid block, up blocks."""
    names = [n for _, m in module.named_modules() if isinstance(m, _Block) for n in m.bank_names]
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(names, key=lambda n: (order[n.split(".")[0]], names.index(n)))


def time_embedding(module: nn.Module, timesteps: torch.Tensor | float | int, rows: int, batch: int,
                   device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Timesteps -> (rows, time_embed_dim) with ``module.time_proj`` / ``module.time_embedding``.

    Accepts a scalar, (rows,) or (rows // batch,) (one per frame, repeated for each batch entry).
    """
    # a Python number becomes a fill on the device, not a copy from the host (not allowed in a CUDA graph)
    t = timesteps.to(device) if isinstance(timesteps, torch.Tensor) else torch.full((1,), timesteps, device=device)
    t = t.reshape(-1)
    if t.numel() == 1:
        t = t.expand(rows)
    elif t.numel() != rows:
        if batch > 1 and t.numel() * batch == rows:
            t = t.repeat(batch)
        else:
            raise ValueError(f"got {t.numel()} timesteps for {rows} frames")
    return module.time_embedding(module.time_proj(t).to(dtype))
