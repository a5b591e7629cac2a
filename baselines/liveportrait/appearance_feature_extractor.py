"""LivePortrait's appearance feature extractor F: a 256x256 RGB image -> a 3-D feature volume.

3 x 256 x 256 in [0, 1] -> SameBlock2d -> two DownBlock2d (to 64 x 64) -> 1x1 conv to ``max_features``
channels -> viewed as (``reshape_channel``, ``reshape_depth``) with channel index c * depth + d -> six
ResBlock3d. Released model: 32 x 16 x 64 x 64, 836,224 parameters, 107 state-dict keys
(``base_models/appearance_feature_extractor.pth``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from baselines.liveportrait.blocks import DownBlock2d, ResBlock3d, SameBlock2d


@dataclass(frozen=True)
class AppearanceFeatureExtractorConfig:
    image_channel: int = 3
    block_expansion: int = 64
    num_down_blocks: int = 2
    max_features: int = 512
    reshape_channel: int = 32
    reshape_depth: int = 16
    num_resblocks: int = 6

    @classmethod
    def tiny(cls) -> AppearanceFeatureExtractorConfig:
        return cls(block_expansion=8, max_features=16, reshape_channel=4, reshape_depth=4, num_resblocks=2)


class AppearanceFeatureExtractor(nn.Module):
    """(n, 3, 256, 256) in [0, 1] -> f_s (n, reshape_channel, reshape_depth, 64, 64)."""

    def __init__(self, config: AppearanceFeatureExtractorConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or AppearanceFeatureExtractorConfig()
        if cfg.reshape_channel * cfg.reshape_depth != cfg.max_features:
            raise ValueError("reshape_channel * reshape_depth must equal max_features")
        be, mf = cfg.block_expansion, cfg.max_features
        self.first = SameBlock2d(cfg.image_channel, be, kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(min(mf, be * 2**i), min(mf, be * 2 ** (i + 1))) for i in range(cfg.num_down_blocks)
        )
        self.second = nn.Conv2d(min(mf, be * 2**cfg.num_down_blocks), mf, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(cfg.num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(cfg.reshape_channel))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.first(image)
        for block in self.down_blocks:
            x = block(x)
        x = self.second(x)
        n, _, h, w = x.shape
        x = x.view(n, self.config.reshape_channel, self.config.reshape_depth, h, w)
        return self.resblocks_3d(x)
