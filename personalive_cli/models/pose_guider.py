"""PoseGuider: the keypoint-dot canvas -> an additive feature for the denoising UNet (spec §1.6, §2.3).

The canvas (seven coloured dots, see `pipeline.keypoints.draw_keypoints`) is encoded frame by frame by a
stack of 3x3 convolutions with SiLU in between and three stride-2 steps, so the output sits on the latent
grid (H/8, W/8) with as many channels as the UNet's first block. The UNet adds it right after `conv_in`.

State-dict keys (16): `conv_in.*`, `blocks.{0..5}.*`, `conv_out_modify.*` (all with bias).

`PoseGuiderConfig` is the architecture as data (what `PersonaLiveConfig` stores); the module itself is a
diffusers model whose ``__init__`` takes the same fields (``PoseGuider.from_config(asdict(cfg))``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from personalive_cli.models.attention_processor import AttentionProcessorMixin
from personalive_cli.models.modeling_utils import (
    CheckpointedModule,
    PersonaLiveModelMixin,
    accepts_config_dataclass,
)

__all__ = ["PoseGuider", "PoseGuiderConfig"]


@dataclass(frozen=True)
class PoseGuiderConfig:
    """Widths of the pose guider. The defaults are the released model (1,086,480 parameters)."""

    in_channels: int = 3
    # Width after conv_in, then the width of each downsampling level (each level: same-width conv, then a
    # stride-2 conv to the next width). Three transitions -> 8x downsampling.
    block_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    # = the denoising UNet's first block width (320 for SD-1.5).
    out_channels: int = 320
    # The released model was trained from a zero-initialised output conv (the pose feature starts as a
    # no-op); the checkpoint overrides it anyway.
    zero_init_out: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def tiny(cls, out_channels: int = 32) -> PoseGuiderConfig:
        """A few channels, same code path; `out_channels` = the tiny UNet's first block width."""
        return cls(block_out_channels=(4, 8, 8, 16), out_channels=out_channels)


class PoseGuider(PersonaLiveModelMixin, AttentionProcessorMixin, ModelMixin, ConfigMixin):
    """Canvas (b, 3, f, H, W) in [0, 1] -> pose feature (b, out_channels, f, H/8, W/8).

    A 4-D input (n, 3, H, W) is treated as n independent frames and gives (n, out_channels, H/8, W/8).
    Frames never interact, so the output for a frame does not depend on the others. Arguments: the fields
    of `PoseGuiderConfig`.
    """

    @accepts_config_dataclass(PoseGuiderConfig)
    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        out_channels: int = 320,
        zero_init_out: bool = True,
    ) -> None:
        super().__init__()
        widths = tuple(block_out_channels)
        if len(widths) < 1:
            raise ValueError("block_out_channels needs at least one width")
        self.register_to_config(block_out_channels=widths)
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.blocks = _ConvStack(widths)
        self.conv_out_modify = nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1)
        if zero_init_out:
            nn.init.zeros_(self.conv_out_modify.weight)
            nn.init.zeros_(self.conv_out_modify.bias)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        """canvas: (b, c, f, H, W) or (n, c, H, W), any float dtype; cast to the weights' dtype."""
        if canvas.ndim not in (4, 5):
            raise ValueError(f"expected a (b, c, f, h, w) or (n, c, h, w) canvas, got shape {tuple(canvas.shape)}")
        video = canvas.ndim == 5
        if video:
            b, c, f, h, w = canvas.shape
            x = canvas.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        else:
            x = canvas
        x = x.to(self.conv_in.weight.dtype)
        x = F.silu(self.conv_in(x))
        x = self.blocks(x)
        x = self.conv_out_modify(x)
        if video:
            x = x.reshape(b, f, *x.shape[1:]).permute(0, 2, 1, 3, 4)
        return x


class _ConvStack(nn.ModuleList, CheckpointedModule):
    """`blocks.{0..}`: per level a same-width 3x3 conv and a stride-2 3x3 conv to the next width, SiLU after
    each. A ModuleList (the checkpoint keys are `blocks.<i>.*`) that checkpoints one level at a time."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        convs = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            convs.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            convs.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        super().__init__(convs)

    def _level(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self[i + 1](F.silu(self[i](x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(0, len(self), 2):
            x = self.checkpointed(self._level, i, x)
        return x
