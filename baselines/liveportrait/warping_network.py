"""LivePortrait's warping module W: dense motion (with occlusion) from implicit keypoints, then warping.

Inputs: the appearance volume f_s (n, C, D, 64, 64), source keypoints x_s and driving keypoints x_d
(n, K, 3). The dense motion network compresses f_s, builds K + 1 sparse motions (the identity for the
background, and one translation per keypoint taking the driving position to the source position),
samples the compressed volume with each, adds Gaussian heat-map differences, and runs a 3-D hourglass
whose output gives softmax weights over the sparse motions (-> a dense deformation field) and an
occlusion map. The warped volume is flattened to 2-D, refined (``third``, ``fourth``) and multiplied by
the occlusion map. Released model: 45,529,829 parameters, 97 keys (``base_models/warping_module.pth``).

Grid conventions follow the release exactly: the identity grid puts -1 and +1 on the centres of the
first and last voxels while 5-D ``grid_sample`` uses align_corners=False (so the "identity" warp is a
slight zoom with half-weighted borders); components are ordered (x from width, y from height, z from
depth).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from baselines.liveportrait.blocks import DownBlock3d, SameBlock2d, UpBlock3d

KP_VARIANCE = 0.01


@dataclass(frozen=True)
class DenseMotionConfig:
    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    reshape_depth: int = 16
    compress: int = 4


@dataclass(frozen=True)
class WarpingNetworkConfig:
    num_kp: int = 21
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    reshape_channel: int = 32
    dense_motion: DenseMotionConfig = field(default_factory=DenseMotionConfig)

    @classmethod
    def tiny(cls) -> WarpingNetworkConfig:
        return cls(block_expansion=4, max_features=16, reshape_channel=4,
                   dense_motion=DenseMotionConfig(block_expansion=2, max_features=16, num_blocks=3,
                                                  reshape_depth=4, compress=1))


def coordinate_grid(d: int, h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(d, h, w, 3) grid with (x, y, z) in [-1, 1], the end values on the centres of the end voxels."""

    def axis(n: int) -> torch.Tensor:
        return 2 * (torch.arange(n, dtype=dtype, device=device) / (n - 1)) - 1

    z, y, x = torch.meshgrid(axis(d), axis(h), axis(w), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


class Encoder3d(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock3d(in_features if i == 0 else min(max_features, block_expansion * 2**i),
                        min(max_features, block_expansion * 2 ** (i + 1)))
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder3d(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            width_in = (1 if i == num_blocks - 1 else 2) * min(max_features, block_expansion * 2 ** (i + 1))
            blocks.append(UpBlock3d(width_in, min(max_features, block_expansion * 2**i)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters, affine=True)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass3d(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        self.encoder = Encoder3d(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder3d(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class DenseMotionNetwork(nn.Module):
    """f_s, x_d, x_s -> deformation (n, D, H, W, 3) and occlusion map (n, 1, H, W)."""

    def __init__(self, num_kp: int, feature_channel: int, config: DenseMotionConfig) -> None:
        super().__init__()
        self.num_kp = num_kp
        self.hourglass = Hourglass3d(config.block_expansion, (num_kp + 1) * (config.compress + 1),
                                     config.num_blocks, config.max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, config.compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(config.compress, affine=True)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters * config.reshape_depth, 1, kernel_size=7, padding=3)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, d, h, w = feature.shape
        k = self.num_kp + 1
        feature = F.relu(self.norm(self.compress(feature)))
        c = feature.shape[1]
        grid = coordinate_grid(d, h, w, kp_source.dtype, kp_source.device)  # (d, h, w, 3)

        # Sparse motions: background identity, then per keypoint grid - x_d[k] + x_s[k].
        to_source = (grid[None, None] - kp_driving.view(n, self.num_kp, 1, 1, 1, 3)
                     + kp_source.view(n, self.num_kp, 1, 1, 1, 3))
        motions = torch.cat([grid.expand(n, 1, d, h, w, 3), to_source], dim=1)  # (n, k, d, h, w, 3)

        volumes = feature[:, None].expand(n, k, c, d, h, w).reshape(n * k, c, d, h, w)
        deformed = F.grid_sample(volumes, motions.reshape(n * k, d, h, w, 3).to(volumes.dtype),
                                 mode="bilinear", padding_mode="zeros", align_corners=False)
        deformed = deformed.view(n, k, c, d, h, w)

        def gaussian(kp: torch.Tensor) -> torch.Tensor:
            diff = grid[None, None] - kp.view(n, self.num_kp, 1, 1, 1, 3)
            return torch.exp(-0.5 * (diff**2).sum(-1) / KP_VARIANCE)

        heat = gaussian(kp_driving) - gaussian(kp_source)  # (n, K, d, h, w)
        heat = torch.cat([heat.new_zeros(n, 1, d, h, w), heat], dim=1)[:, :, None]
        x = torch.cat([heat.to(deformed.dtype), deformed], dim=2).view(n, k * (c + 1), d, h, w)

        prediction = self.hourglass(x)
        mask = torch.softmax(self.mask(prediction), dim=1)  # (n, k, d, h, w)
        deformation = (motions.to(mask.dtype) * mask[..., None]).sum(dim=1)  # (n, d, h, w, 3)
        occlusion = torch.sigmoid(self.occlusion(prediction.reshape(n, -1, h, w)))
        return deformation, occlusion


class WarpingNetwork(nn.Module):
    """(f_s, x_s, x_d) -> (warped feature (n, 256, 64, 64), occlusion (n, 1, 64, 64), deformation)."""

    def __init__(self, config: WarpingNetworkConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or WarpingNetworkConfig()
        if cfg.reshape_channel * cfg.dense_motion.reshape_depth != cfg.max_features:
            raise ValueError("reshape_channel * dense_motion.reshape_depth must equal max_features")
        self.dense_motion_network = DenseMotionNetwork(cfg.num_kp, cfg.reshape_channel, cfg.dense_motion)
        width = cfg.block_expansion * 2**cfg.num_down_blocks
        self.third = SameBlock2d(cfg.max_features, width, kernel_size=3, padding=1, lrelu=True)
        self.fourth = nn.Conv2d(width, width, kernel_size=1)

    @property
    def out_channels(self) -> int:
        return self.fourth.out_channels

    def forward(self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        deformation, occlusion = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        out = F.grid_sample(feature_3d, deformation.to(feature_3d.dtype), mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        n, c, d, h, w = out.shape
        out = self.fourth(self.third(out.reshape(n, c * d, h, w)))
        return out * occlusion.to(out.dtype), occlusion, deformation
