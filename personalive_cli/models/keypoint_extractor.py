"""Implicit 3-D keypoints: LivePortrait's motion extractor (the network and the decoding of its heads).

Network (spec §1.7, §2.5; LivePortrait spec §3.2): a ConvNeXtV2-tiny under `detector.` reads a 256x256 RGB
image in [0, 1] and predicts 21 canonical keypoints, head pose (pitch / yaw / roll as 66 bins of 3
degrees), a translation, a scale, and (opt-in, LivePortrait only) 21 expression offsets. The checkpoint is
`motion_extractor.pth` (212 `detector.*` keys, 28,118,728 elements; PersonaLive's copy also holds
`idx_tensor` = arange(66), which is accepted and checked on load but is not part of this module's state).

Precision: the ConvNeXt LayerNorms (stem, downsample and block norms) keep fp32 weights when the module is
cast to fp16/bf16 and compute in fp32, returning the input dtype (as the official PersonaLive module does).
The final `detector.norm` is an ordinary LayerNorm.

Decoding (here, because it defines what the outputs mean and LivePortrait uses it too): head-pose bins to
degrees, and posed keypoints k' = s * (R k_c [+ exp]) + (t_x, t_y, 0) with R = Rz(roll) Ry(yaw) Rx(pitch)
applied as R k. What PersonaLive does with them (pose transfer, warm-up interpolation, the dot canvas, face
boxes and crops) is pipeline work and lives in `personalive_cli.pipeline.keypoints`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

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

__all__ = [
    "KeypointExtractor",
    "KeypointExtractorConfig",
    "KeypointInfo",
    "headpose_to_degrees",
    "posed_keypoints",
    "rotation_matrix",
]

NUM_BINS = 66


# ----------------------------------------------------------------------------------------------------------
# Config and outputs


@dataclass(frozen=True)
class KeypointExtractorConfig:
    """ConvNeXtV2 widths and heads. The defaults are the released (LivePortrait) model."""

    in_channels: int = 3
    depths: tuple[int, int, int, int] = (3, 3, 9, 3)
    dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    num_kp: int = 21
    num_bins: int = NUM_BINS  # head-pose bins of 3 degrees; the decoding assumes 66

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def tiny(cls) -> KeypointExtractorConfig:
        """Few channels and one block per stage; same code path and output shapes."""
        return cls(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))


@dataclass
class KeypointInfo:
    """Detector outputs for n images (or a transferred / interpolated pose set).

    kp: (n, K, 3) canonical keypoints; pitch, yaw, roll: (n,) degrees; t: (n, 3) (z is never used);
    scale: (n, 1); exp: (n, K, 3) expression offsets or None (only computed when asked for).
    """

    kp: torch.Tensor
    pitch: torch.Tensor
    yaw: torch.Tensor
    roll: torch.Tensor
    t: torch.Tensor
    scale: torch.Tensor
    exp: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.kp.shape[0]

    def select(self, index: int | slice | torch.Tensor) -> KeypointInfo:
        """Batch subset; an int keeps the batch dimension (info.select(0) has length 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return KeypointInfo(**{f.name: (None if (v := getattr(self, f.name)) is None else v[index])
                               for f in fields(self)})

    def posed(self, with_exp: bool = False) -> torch.Tensor:
        """(n, K, 3) posed keypoints; `with_exp` adds the expression offsets (LivePortrait's x_s)."""
        if with_exp and self.exp is None:
            raise ValueError("this KeypointInfo has no expression offsets (run the extractor with with_exp=True)")
        return posed_keypoints(self.kp, self.pitch, self.yaw, self.roll, self.t, self.scale,
                               self.exp if with_exp else None)

    @staticmethod
    def cat(infos: Sequence[KeypointInfo]) -> KeypointInfo:
        """Concatenate along the batch; `exp` is kept only if every part has it."""
        out = {}
        for f in fields(KeypointInfo):
            parts = [getattr(i, f.name) for i in infos]
            out[f.name] = None if any(p is None for p in parts) else torch.cat(parts, dim=0)
        return KeypointInfo(**out)


# ----------------------------------------------------------------------------------------------------------
# ConvNeXtV2 pieces


class LayerNorm32(nn.Module):
    """LayerNorm over channels that computes in fp32 and keeps fp32 weights under half-precision casts.

    channels_first=True normalises dim 1 of (n, C, H, W); otherwise the last dim. Returns the input dtype.
    Keys: weight, bias (C,).
    """

    def __init__(self, channels: int, eps: float = 1e-6, channels_first: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, dtype=torch.float32))
        self.bias = nn.Parameter(torch.zeros(channels, dtype=torch.float32))
        self.eps = float(eps)
        self.channels_first = channels_first

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - torch's signature
        # Let torch move/cast as usual, then put fp32 copies back where the cast produced half precision.
        originals = {name: p.data for name, p in self._parameters.items() if p is not None}
        super()._apply(fn, recurse)
        for name, p in self._parameters.items():
            if p is not None and p.dtype in (torch.float16, torch.bfloat16):
                p.data = originals[name].to(device=p.device, dtype=torch.float32)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = x.float()
        if self.channels_first:
            y = y.permute(0, 2, 3, 1)
        y = F.layer_norm(y, (y.shape[-1],), self.weight.float(), self.bias.float(), self.eps)
        if self.channels_first:
            y = y.permute(0, 3, 1, 2)
        return y.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, channels_first={self.channels_first}"


class GRN(nn.Module):
    """Global response normalisation on channels-last (n, H, W, C): per-channel L2 norm over H, W divided by
    its mean over channels (+1e-6); y = gamma * (x * N) + beta + x. Keys: gamma, beta (1, 1, 1, C)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * n) + self.beta + x


class ConvNeXtBlock(CheckpointedModule):
    """dwconv 7x7 -> LN -> Linear(d, 4d) -> GELU (exact) -> GRN -> Linear(4d, d), residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm32(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.checkpointed(self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2Detector(nn.Module):
    """ConvNeXtV2 trunk + global pool + LayerNorm + the seven LivePortrait heads (raw outputs)."""

    def __init__(self, cfg: KeypointExtractorConfig) -> None:
        super().__init__()
        dims = cfg.dims
        layers = [nn.Sequential(nn.Conv2d(cfg.in_channels, dims[0], kernel_size=4, stride=4),
                                LayerNorm32(dims[0], eps=1e-6, channels_first=True))]
        for i in range(3):
            layers.append(nn.Sequential(LayerNorm32(dims[i], eps=1e-6, channels_first=True),
                                        nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        self.downsample_layers = nn.ModuleList(layers)
        self.stages = nn.ModuleList(
            [nn.Sequential(*[ConvNeXtBlock(d) for _ in range(n)]) for d, n in zip(dims, cfg.depths, strict=True)]
        )
        width = dims[-1]
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.fc_kp = nn.Linear(width, 3 * cfg.num_kp)
        self.fc_scale = nn.Linear(width, 1)
        self.fc_pitch = nn.Linear(width, cfg.num_bins)
        self.fc_yaw = nn.Linear(width, cfg.num_bins)
        self.fc_roll = nn.Linear(width, cfg.num_bins)
        self.fc_t = nn.Linear(width, 3)
        self.fc_exp = nn.Linear(width, 3 * cfg.num_kp)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        return self.norm(x.mean(dim=(-2, -1)))

    def forward(self, x: torch.Tensor, with_exp: bool = False) -> dict[str, torch.Tensor]:
        h = self.features(x)
        out = {
            "kp": self.fc_kp(h),
            "pitch": self.fc_pitch(h),
            "yaw": self.fc_yaw(h),
            "roll": self.fc_roll(h),
            "t": self.fc_t(h),
            "scale": self.fc_scale(h),
        }
        if with_exp:
            out["exp"] = self.fc_exp(h)
        return out


class KeypointExtractor(PersonaLiveModelMixin, AttentionProcessorMixin, ModelMixin, ConfigMixin):
    """Images (n, 3, 256, 256) RGB in [0, 1] -> KeypointInfo (kp (n,21,3), degrees (n,), t, scale[, exp]).

    The input is cast to the weights' dtype; outputs are in that dtype. Loading accepts PersonaLive's extra
    `idx_tensor` key (checked to be arange(66)) as well as LivePortrait's file without it. Arguments: the
    fields of `KeypointExtractorConfig`.
    """

    @accepts_config_dataclass(KeypointExtractorConfig)
    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        depths: tuple[int, int, int, int] = (3, 3, 9, 3),
        dims: tuple[int, int, int, int] = (96, 192, 384, 768),
        num_kp: int = 21,
        num_bins: int = NUM_BINS,
    ) -> None:
        super().__init__()
        if num_bins != NUM_BINS:
            raise ValueError(f"head-pose decoding assumes {NUM_BINS} bins, got {num_bins}")
        config = KeypointExtractorConfig(in_channels, tuple(depths), tuple(dims), num_kp, num_bins)
        self.register_to_config(depths=config.depths, dims=config.dims)
        self.detector = ConvNeXtV2Detector(config)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,  # noqa: ANN001
                              unexpected_keys, error_msgs):
        value = state_dict.pop(prefix + "idx_tensor", None)
        if value is not None and value.device.type != "meta":
            expected = torch.arange(NUM_BINS, dtype=torch.float32)
            if tuple(value.shape) != (NUM_BINS,) or not torch.equal(value.detach().float().cpu(), expected):
                error_msgs.append(f"{prefix}idx_tensor must be arange({NUM_BINS}), got shape {tuple(value.shape)}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, images: torch.Tensor, with_exp: bool = False) -> KeypointInfo:
        x = images.to(self.detector.fc_kp.weight.dtype)
        raw = self.detector(x, with_exp=with_exp)
        n = x.shape[0]
        return KeypointInfo(
            kp=raw["kp"].reshape(n, -1, 3),
            pitch=headpose_to_degrees(raw["pitch"]),
            yaw=headpose_to_degrees(raw["yaw"]),
            roll=headpose_to_degrees(raw["roll"]),
            t=raw["t"],
            scale=raw["scale"],
            exp=raw["exp"].reshape(n, -1, 3) if with_exp else None,
        )


# ----------------------------------------------------------------------------------------------------------
# Decoding: head-pose bins and posed keypoints


def headpose_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """(n, 66) bin logits -> (n,) degrees = 3 * E[bin] - 97.5 (softmax expectation), in the logits' dtype."""
    prob = torch.softmax(logits, dim=1)
    bins = torch.arange(logits.shape[1], dtype=logits.dtype, device=logits.device)
    return torch.matmul(prob, bins) * 3 - 97.5


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Degrees (n,) or (n, 1) -> R (n, 3, 3) float32, R = Rz(roll) @ Ry(yaw) @ Rx(pitch) (right-handed),
    to be applied to column vectors: posed = R @ k (row form k @ R^T).

    The angle -> radian conversion and sin/cos run in the input dtype; the matrices are built and
    multiplied in fp32 (as the official code does for fp16 inputs).
    """
    def trig(angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rad = angle.reshape(-1) / 180 * math.pi
        return torch.cos(rad).float(), torch.sin(rad).float()

    (cx, sx), (cy, sy), (cz, sz) = trig(pitch), trig(yaw), trig(roll)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)

    def mat(*rows: torch.Tensor) -> torch.Tensor:
        return torch.stack(rows, dim=-1).reshape(-1, 3, 3)

    rx = mat(one, zero, zero, zero, cx, -sx, zero, sx, cx)
    ry = mat(cy, zero, sy, zero, one, zero, -sy, zero, cy)
    rz = mat(cz, -sz, zero, sz, cz, zero, zero, zero, one)
    return rz @ ry @ rx


def posed_keypoints(kp: torch.Tensor, pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor,
                    t: torch.Tensor, scale: torch.Tensor, exp: torch.Tensor | None = None) -> torch.Tensor:
    """k' = scale * (R k + exp) + (t_x, t_y, 0) for every keypoint.

    kp, exp: (n, K, 3); pitch/yaw/roll: (n,) or (n, 1) degrees; t: (n, 3); scale: (n, 1).
    Returns (n, K, 3) in kp's dtype (R is cast to it first). PersonaLive never passes exp.
    """
    r = rotation_matrix(pitch, yaw, roll).to(kp.dtype)
    x = kp @ r.transpose(1, 2)
    if exp is not None:
        x = x + exp
    x = x * scale.reshape(-1, 1, 1)
    return torch.cat([x[..., :2] + t[:, None, :2], x[..., 2:]], dim=-1)
