"""Motion encoder: a 224x224 face crop -> 32 motion tokens of width 16 (spec §1.8, §2.4).

The "implicit facial representation" of PersonaLive. A FAN-style network (pre-activation ConvBlocks and a
depth-4 hourglass) with three patch-based spatial transformers (`att_1`, `att_2`, `att_3`) ends in a 512-d
vector per frame; `final_proj` maps it to 512 again and it is read as 32 tokens x 16 channels, to which a
fixed 1-D sin-cos table `pe` is added. Frames are independent.

Checkpoint layout (`motion_encoder.pth`, 403 keys, 61,643,889 elements): `pe`, `final_proj.*`, and the
FAN under `model.` (`conv1`, `bn1`, `conv2..4`, `m0.*` hourglass, `top_m_0`, `conv_last0`, `bn_end0`, `l0`,
`bn5`, `conv6`, `fc`, `att_{1,2,3}.*`). The patch embeddings' 2-D sin-cos position table is not in the
file: it is regenerated here (cached per grid and device, never part of the state dict).

BatchNorms use their running statistics in `eval()` mode, as at inference. Attention and feed-forward are
diffusers' `Attention` (SDPA processor by default; ``set_attn_processor`` changes it) and `FeedForward`
(GEGLU), whose key names match; the sin-cos tables are diffusers' functions. The FAN trunk (ConvBlock,
HourGlass) has no diffusers counterpart.

The model is a diffusers model (``from_pretrained`` / ``save_pretrained``, gradient checkpointing of the
three attention branches); `MotionEncoderConfig` is the same architecture as data, with its validation.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid, get_2d_sincos_pos_embed
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from personalive_cli.models.attention_processor import AttentionProcessorMixin
from personalive_cli.models.modeling_utils import (
    CheckpointedModule,
    PersonaLiveModelMixin,
    accepts_config_dataclass,
    dataclass_from_config,
)

__all__ = [
    "MotionEncoder",
    "MotionEncoderConfig",
    "sincos_embedding_1d",
    "sincos_embedding_2d",
]


# ----------------------------------------------------------------------------------------------------------
# Fixed sin-cos tables


# diffusers >= 0.32 builds the tables with torch (``output_type="pt"``); older versions return numpy.
_TORCH_TABLES = "output_type" in inspect.signature(get_2d_sincos_pos_embed).parameters
_TABLE_KWARGS = {"output_type": "pt"} if _TORCH_TABLES else {}


def sincos_embedding_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos table for 1-D positions (diffusers' ``get_1d_sincos_pos_embed_from_grid``).

    positions: (L,) any real dtype. Returns (L, dim) float64 on the positions' device: entry [m, k] =
    sin(pos_m * w_k) for k < dim/2 and cos(pos_m * w_{k - dim/2}) after, with w_k = 10000 ** (-k / (dim/2)).
    """
    if dim % 2:
        raise ValueError(f"embedding width must be even, got {dim}")
    pos = positions.detach().to(torch.float64)
    if _TORCH_TABLES:  # on the positions' device (the meta device included: a model built for loading)
        return get_1d_sincos_pos_embed_from_grid(dim, pos, **_TABLE_KWARGS).to(torch.float64)
    if pos.device.type == "meta":
        return torch.empty(pos.shape[0], dim, dtype=torch.float64, device="meta")
    return torch.as_tensor(get_1d_sincos_pos_embed_from_grid(dim, pos.cpu().numpy())).to(pos.device)


def sincos_embedding_2d(dim: int, grid_h: int, grid_w: int, base_size: int | None = None,
                        device: torch.device | str | None = "cpu") -> torch.Tensor:
    """2-D sin-cos table of a (grid_h, grid_w) token grid in row-major order (token = row * grid_w + col)
    (diffusers' ``get_2d_sincos_pos_embed``, interpolation scale 1).

    Returns (grid_h * grid_w, dim) float32. The first dim/2 channels encode the column, the last dim/2 the
    row, each as `sincos_embedding_1d`. Positions are index / (grid / base_size) (diffusers' PatchEmbed
    convention; base_size defaults to grid_h, which gives plain indices).
    """
    if dim % 4:
        raise ValueError(f"2-D embedding width must be a multiple of 4, got {dim}")
    base = grid_h if base_size is None else base_size
    table = get_2d_sincos_pos_embed(dim, (grid_h, grid_w), base_size=base, interpolation_scale=1.0, **_TABLE_KWARGS)
    return torch.as_tensor(table).to(device=device, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class MotionEncoderConfig:
    """Widths of the motion encoder. The defaults are the released model."""

    image_size: int = 224  # square face crop; must be a multiple of 8
    stem_channels: int = 64  # conv1 / bn1
    mid_channels: int = 128  # conv2, conv3, att_1
    hourglass_channels: int = 256  # conv4, hourglass, top_m_0, conv_last0, att_2, att_3
    hourglass_depth: int = 4
    heatmap_channels: int = 68  # l0 / bn5 / conv6 input
    feature_dim: int = 512  # fc output = final_proj width = num_tokens * token_dim
    token_dim: int = 16  # width of one motion token (the UNet motion modules' key width)
    attention_heads: int = 8
    attention_head_dim: int = 128  # inner width = heads * head_dim (1024)
    norm_num_groups: int = 32  # GroupNorm before each patch embedding
    patch_sizes: tuple[int, int, int] = (4, 2, 2)  # att_1, att_2, att_3
    # Training starts with the attention branches as identities (zero proj_out); checkpoints override it.
    zero_init_attention_out: bool = True

    @classmethod
    def tiny(cls, image_size: int = 224) -> MotionEncoderConfig:
        """Few channels, same code path, same (32, 16) token output."""
        return cls(
            image_size=image_size,
            stem_channels=8,
            mid_channels=16,
            hourglass_channels=32,
            heatmap_channels=8,
            attention_heads=2,
            attention_head_dim=16,
            norm_num_groups=8,
        )

    @property
    def num_tokens(self) -> int:
        return self.feature_dim // self.token_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def inner_dim(self) -> int:
        return self.attention_heads * self.attention_head_dim

    def validate(self) -> None:
        s = self.image_size
        problems = []
        if s % 8:
            problems.append(f"image_size {s} is not a multiple of 8")
        if self.feature_dim % self.token_dim:
            problems.append("feature_dim must be a multiple of token_dim")
        for name in ("mid_channels", "hourglass_channels"):
            if getattr(self, name) % 4:
                problems.append(f"{name} must be a multiple of 4 (ConvBlock splits it as 1/2 + 1/4 + 1/4)")
        for name in ("mid_channels", "hourglass_channels"):
            if getattr(self, name) % self.norm_num_groups:
                problems.append(f"{name} must be divisible by norm_num_groups")
        sizes = (s // 2, s // 4, s // 4)
        for k, (p, size) in enumerate(zip(self.patch_sizes, sizes, strict=True), start=1):
            if size % p:
                problems.append(f"att_{k}: feature map {size} not divisible by patch {p}")
            if self.inner_dim % (p * p):
                problems.append(f"att_{k}: inner width {self.inner_dim} not divisible by patch^2 {p * p}")
        if (s // 4) < 2 ** self.hourglass_depth:
            problems.append("image too small for the hourglass depth")
        if problems:
            raise ValueError("invalid MotionEncoderConfig: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------------------
# Building blocks


class ConvBlock(nn.Module):
    """FAN pre-activation block: three chained BN -> ReLU -> 3x3 conv units (out/2, out/4, out/4 channels),
    their outputs concatenated (= out channels), plus the input (projected by BN(eps 1e-4) -> ReLU -> 1x1
    conv when the widths differ). Keys: bn1, conv1, bn2, conv2, bn3, conv3[, downsample.0, downsample.2]."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half, quarter = out_channels // 2, out_channels // 4
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, half, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, quarter, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(quarter)
        self.conv3 = nn.Conv2d(quarter, quarter, kernel_size=3, padding=1, bias=False)
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.BatchNorm2d(in_channels, eps=1e-4),
                nn.ReLU(),
                nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            )
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(F.relu(self.bn1(x)))
        b = self.conv2(F.relu(self.bn2(a)))
        c = self.conv3(F.relu(self.bn3(b)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.cat([a, b, c], dim=1) + shortcut


class HourGlass(nn.Module):
    """Recursive hourglass of ConvBlock(C, C): at level L the upper branch is `b1_L`, the lower branch is
    max-pool 2 -> `b2_L` -> (level L-1, or `b2_plus_1` at the bottom) -> `b3_L`, bilinearly upsampled
    (align_corners False) to the upper branch's size and added. Dropout(0.5) on the upper branch (train only)."""

    def __init__(self, depth: int, channels: int) -> None:
        super().__init__()
        self.depth = depth
        self.dropout = nn.Dropout(0.5)
        self._build(depth, channels)

    def _build(self, level: int, channels: int) -> None:
        # Registration order follows the checkpoint's key order (b1_4, b2_4, b1_3, ..., b2_plus_1, b3_1, ...).
        self.add_module(f"b1_{level}", ConvBlock(channels, channels))
        self.add_module(f"b2_{level}", ConvBlock(channels, channels))
        if level > 1:
            self._build(level - 1, channels)
        else:
            self.add_module(f"b2_plus_{level}", ConvBlock(channels, channels))
        self.add_module(f"b3_{level}", ConvBlock(channels, channels))

    def _run(self, level: int, x: torch.Tensor) -> torch.Tensor:
        upper = self.dropout(self._modules[f"b1_{level}"](x))
        lower = self._modules[f"b2_{level}"](F.max_pool2d(x, kernel_size=2, stride=2))
        if level > 1:
            lower = self._run(level - 1, lower)
        else:
            lower = self._modules[f"b2_plus_{level}"](lower)
        lower = self._modules[f"b3_{level}"](lower)
        lower = F.interpolate(lower, size=upper.shape[-2:], mode="bilinear", align_corners=False)
        return upper + lower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.depth, x)


class PatchEmbed(nn.Module):
    """Conv patchify (kernel = stride = patch) to (n, tokens, dim) plus a fixed 2-D sin-cos table.

    Same key (`proj`), the same table (`sincos_embedding_2d`, diffusers' function) and the same sum as
    diffusers' `PatchEmbed` with interpolation scale 1. Not that module itself, for two reasons: its table
    is a (non-persistent) buffer, so casting the model to fp16 would round the table and add in fp16
    (here the table stays fp32 and the sum is cast back to the tokens' dtype; switching would change fp16
    outputs), and a module built on the meta device and filled by `load_state_dict(assign=True)` would keep it on
    meta. The table is computed on demand, cached per grid and device.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int, base_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.base_size = base_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self._tables: dict[tuple[int, int, str], torch.Tensor] = {}

    def position_table(self, grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
        key = (grid_h, grid_w, str(device))
        table = self._tables.get(key)
        if table is None:
            table = sincos_embedding_2d(self.proj.out_channels, grid_h, grid_w, self.base_size).to(device)
            self._tables[key] = table
        return table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x)  # (n, dim, gh, gw)
        gh, gw = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)  # (n, gh*gw, dim), row-major
        return (tokens + self.position_table(gh, gw, tokens.device)).to(tokens.dtype)


class SpatialTransformerBlock(nn.Module):
    """Pre-LN self-attention (no qkv bias) and GEGLU feed-forward, both residual. Keys:
    attention_blocks.0.{to_q,to_k,to_v,to_out.0}, norms.0, ff.net.{0.proj,2}, ff_norm."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList([Attention(query_dim=dim, heads=heads, dim_head=head_dim, bias=False)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim)])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms, strict=True):
            x = attention(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class PatchSelfAttention(CheckpointedModule):
    """`att_k`: GroupNorm(eps 1e-6) -> patch embed (+ sin-cos) -> one transformer block -> each token split
    into patch x patch sub-pixels (features ordered (p, q, c), c fastest) -> Linear to C (`proj_out`) ->
    pixels scattered back (token (h, w), sub-pixel (p, q) -> pixel (h*P + p, w*P + q)) -> + input."""

    def __init__(self, channels: int, size: int, patch_size: int, heads: int, head_dim: int, groups: int,
                 zero_init_out: bool) -> None:
        super().__init__()
        inner = heads * head_dim
        self.patch_size = patch_size
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.pos_embed = PatchEmbed(channels, inner, patch_size, base_size=size // patch_size)
        self.transformer_blocks = nn.ModuleList([SpatialTransformerBlock(inner, heads, head_dim)])
        self.proj_out = nn.Linear(inner // (patch_size * patch_size), channels)
        if zero_init_out:
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Checkpointed as a whole: the attention maps are the memory peak of the encoder in training, and
        # nothing in here has running statistics (unlike the BatchNorm trunk, which is never recomputed).
        return self.checkpointed(self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.patch_size
        tokens = self.pos_embed(self.norm(x))
        for block in self.transformer_blocks:
            tokens = block(tokens)
        gh, gw = h // p, w // p
        pixels = self.proj_out(tokens.reshape(n, gh, gw, p, p, -1))  # (n, gh, gw, p, q, c)
        pixels = pixels.permute(0, 5, 1, 3, 2, 4).reshape(n, c, gh * p, gw * p)
        return pixels + x


class FANEncoder(nn.Module):
    """The FAN trunk (`model.` in the checkpoint): (n, 3, S, S) in [-1, 1] -> (n, feature_dim)."""

    def __init__(self, cfg: MotionEncoderConfig) -> None:
        super().__init__()
        s, c0, c1, c2, ch = (cfg.image_size, cfg.stem_channels, cfg.mid_channels, cfg.hourglass_channels,
                             cfg.heatmap_channels)
        heads, hd, groups, zero = (cfg.attention_heads, cfg.attention_head_dim, cfg.norm_num_groups,
                                   cfg.zero_init_attention_out)
        p1, p2, p3 = cfg.patch_sizes
        self.conv1 = nn.Conv2d(3, c0, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(c0)
        self.conv2 = ConvBlock(c0, c1)
        self.conv3 = ConvBlock(c1, c1)
        self.conv4 = ConvBlock(c1, c2)
        self.m0 = HourGlass(cfg.hourglass_depth, c2)
        self.top_m_0 = ConvBlock(c2, c2)
        self.conv_last0 = nn.Conv2d(c2, c2, kernel_size=1)
        self.l0 = nn.Conv2d(c2, ch, kernel_size=1)
        self.bn_end0 = nn.BatchNorm2d(c2)
        self.conv6 = nn.Conv2d(ch, 1, kernel_size=3, stride=2, padding=1)
        self.fc = nn.Linear((s // 8) ** 2, cfg.feature_dim)
        self.bn5 = nn.BatchNorm2d(ch)
        self.att_1 = PatchSelfAttention(c1, s // 2, p1, heads, hd, groups, zero)
        self.att_2 = PatchSelfAttention(c2, s // 4, p2, heads, hd, groups, zero)
        self.att_3 = PatchSelfAttention(c2, s // 4, p3, heads, hd, groups, zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # S/2
        x = self.att_1(self.conv2(x))
        x = F.max_pool2d(x, kernel_size=2)  # S/4
        x = self.att_2(self.conv4(self.conv3(x)))
        x = self.top_m_0(self.m0(x))
        x = self.att_3(self.bn_end0(self.conv_last0(x)))
        x = F.relu(self.bn5(self.l0(F.relu(x))))
        x = self.conv6(x)  # (n, 1, S/8, S/8)
        return self.fc(F.relu(x.flatten(1)))


# ----------------------------------------------------------------------------------------------------------
# Public module


class MotionEncoder(PersonaLiveModelMixin, AttentionProcessorMixin, ModelMixin, ConfigMixin):
    """Face crops (b, 3, f, S, S) in [-1, 1] -> motion tokens (b, f, num_tokens, token_dim) = (b, f, 32, 16).

    A 4-D input (n, 3, S, S) gives (n, 32, 16). The input is cast to the weights' dtype. The output includes
    the fixed `pe` table (the HKM distance in the streaming engine is computed on these values). Arguments:
    the fields of `MotionEncoderConfig` (validated by it).
    """

    @accepts_config_dataclass(MotionEncoderConfig)
    @register_to_config
    def __init__(
        self,
        image_size: int = 224,
        stem_channels: int = 64,
        mid_channels: int = 128,
        hourglass_channels: int = 256,
        hourglass_depth: int = 4,
        heatmap_channels: int = 68,
        feature_dim: int = 512,
        token_dim: int = 16,
        attention_heads: int = 8,
        attention_head_dim: int = 128,
        norm_num_groups: int = 32,
        patch_sizes: tuple[int, int, int] = (4, 2, 2),
        zero_init_attention_out: bool = True,
    ) -> None:
        super().__init__()
        config = dataclass_from_config(MotionEncoderConfig, self.config)
        config.validate()
        self.register_to_config(patch_sizes=config.patch_sizes)
        self.num_tokens = config.num_tokens
        pe = sincos_embedding_1d(config.token_dim, torch.arange(config.num_tokens, dtype=torch.float64))
        self.register_buffer("pe", pe.to(torch.float32).unsqueeze(0))  # (1, 32, 16), in the checkpoint
        self.model = FANEncoder(config)
        self.final_proj = nn.Linear(config.feature_dim, config.feature_dim)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        size, token_dim = self.config.image_size, self.config.token_dim
        if faces.ndim == 5:
            b, c, f, h, w = faces.shape
            x = faces.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        elif faces.ndim == 4:
            x = faces
        else:
            raise ValueError(f"expected (b, 3, f, h, w) or (n, 3, h, w) faces, got {tuple(faces.shape)}")
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"face crops must be {size}x{size}, got {tuple(x.shape[-2:])}")
        x = x.to(self.final_proj.weight.dtype)
        tokens = self.final_proj(self.model(x)).reshape(-1, self.num_tokens, token_dim) + self.pe
        if faces.ndim == 5:
            tokens = tokens.reshape(b, f, self.num_tokens, token_dim)
        return tokens

