"""LivePortrait's stitching and eye / lip retargeting MLPs (``retargeting_models/stitching_retargeting_module.pth``).

Three plain MLPs (Linear / ReLU alternating, no ReLU after the last Linear; keys ``mlp.<i>.weight|bias``):
stitching 126 -> 128 -> 128 -> 64 -> 65, lip 65 -> 128 -> 128 -> 64 -> 63, eye 66 -> 256 -> 256 -> 128 ->
128 -> 64 -> 63 (227,263 parameters in all). The release stores them in one file as a dict with entries
``retarget_shoulder`` (stitching), ``retarget_mouth`` (lip) and ``retarget_eye`` (eye).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FILE_ENTRIES = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}


@dataclass(frozen=True)
class StitchingRetargetingConfig:
    num_kp: int = 21
    stitching_hidden: tuple[int, ...] = (128, 128, 64)
    lip_hidden: tuple[int, ...] = (128, 128, 64)
    eye_hidden: tuple[int, ...] = (256, 256, 128, 128, 64)

    @classmethod
    def tiny(cls) -> StitchingRetargetingConfig:
        return cls(stitching_hidden=(16, 8), lip_hidden=(16, 8), eye_hidden=(16, 8))


class RetargetingMLP(nn.Module):
    def __init__(self, input_size: int, hidden_sizes: tuple[int, ...], output_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_size
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class StitchingRetargeting(nn.Module):
    """The three MLPs, with the keypoint updates they drive (all fp32, keypoints (n, K, 3))."""

    def __init__(self, config: StitchingRetargetingConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or StitchingRetargetingConfig()
        k3 = 3 * cfg.num_kp
        self.stitching = RetargetingMLP(2 * k3, cfg.stitching_hidden, k3 + 2)
        self.lip = RetargetingMLP(k3 + 2, cfg.lip_hidden, k3)
        self.eye = RetargetingMLP(k3 + 3, cfg.eye_hidden, k3)

    def stitch(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """x_d + delta, then (dt_x, dt_y) added to every keypoint's x and y."""
        n, k = kp_source.shape[:2]
        delta = self.stitching(torch.cat([kp_source.reshape(n, -1), kp_driving.reshape(n, -1)], dim=1).float())
        out = kp_driving.float() + delta[:, : 3 * k].reshape(n, k, 3)
        shift = delta[:, 3 * k : 3 * k + 2].reshape(n, 1, 2)
        return torch.cat([out[..., :2] + shift, out[..., 2:]], dim=-1)

    def retarget_eye(self, kp_source: torch.Tensor, eye_ratios: torch.Tensor) -> torch.Tensor:
        """eye_ratios (n, 3): source left, source right, driving eye openness -> delta (n, K, 3)."""
        n, k = kp_source.shape[:2]
        return self.eye(torch.cat([kp_source.reshape(n, -1), eye_ratios], dim=1).float()).reshape(n, k, 3)

    def retarget_lip(self, kp_source: torch.Tensor, lip_ratios: torch.Tensor) -> torch.Tensor:
        """lip_ratios (n, 2): source and driving lip openness -> delta (n, K, 3)."""
        n, k = kp_source.shape[:2]
        return self.lip(torch.cat([kp_source.reshape(n, -1), lip_ratios], dim=1).float()).reshape(n, k, 3)
