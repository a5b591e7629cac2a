"""LivePortrait's per-frame motion composition (relative to the first driving frame) in plain tensors.

All keypoint algebra runs in fp32 with column-vector rotations R = Rz(roll) Ry(yaw) Rx(pitch) (the shared
``rotation_matrix``). Relative mode, for driving frame i with frame 0 as the reference:
R = R_s R_d0^T R_di, exp = exp_s + (exp_di - exp_d0), scale = s_s s_di / s_d0, t = t_s + (t_di - t_d0)
with t_z = 0, and x_d = scale (R c_s + exp) + (t_x, t_y, 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from baselines.liveportrait.motion_extractor import KeypointInfo, rotation_matrix

REGIONS = ("all", "exp", "pose", "lip", "eyes")
LIP_KEYPOINTS = (6, 12, 14, 17, 19, 20)
EYE_KEYPOINTS = (11, 13, 15, 16, 18)
# Components the release copies from the driving expression in absolute (non-relative) mode.
ABSOLUTE_EXP = {**{k: (0, 1, 2) for k in (1, 2, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)},
                3: (1,), 4: (1,), 5: (2,), 8: (2,), 9: (1, 2)}


@dataclass
class Motion:
    """One frame's motion: canonical kp (n, K, 3), R (n, 3, 3) column form, exp (n, K, 3), scale (n, 1), t (n, 3)."""

    kp: torch.Tensor
    rot: torch.Tensor
    exp: torch.Tensor
    scale: torch.Tensor
    t: torch.Tensor

    @classmethod
    def from_info(cls, info: KeypointInfo) -> Motion:
        return cls(kp=info.kp.float(), rot=rotation_matrix(info.pitch, info.yaw, info.roll),
                   exp=info.exp.float(), scale=info.scale.float().reshape(-1, 1), t=info.t.float())

    def keypoints(self) -> torch.Tensor:
        x = self.kp @ self.rot.transpose(1, 2) + self.exp
        x = x * self.scale.reshape(-1, 1, 1)
        return torch.cat([x[..., :2] + self.t[:, None, :2], x[..., 2:]], dim=-1)


def compose(source: Motion, driving: Motion, first: Motion, relative: bool = True, region: str = "all") -> Motion:
    """The new driving motion of the source for one (batch of) driving frame(s)."""
    if region not in REGIONS:
        raise ValueError(f"unknown animation region {region!r}; choose one of {', '.join(REGIONS)}")
    if relative:
        rot_rel = source.rot @ first.rot.transpose(1, 2) @ driving.rot
        exp_rel = source.exp + (driving.exp - first.exp)
        scale_rel = source.scale * (driving.scale / first.scale)
        t_rel = source.t + (driving.t - first.t)
    else:
        rot_rel, scale_rel, t_rel = driving.rot, source.scale, driving.t
        exp_rel = source.exp.clone().expand_as(driving.exp).clone()
        for k, axes in ABSOLUTE_EXP.items():
            exp_rel[:, k, list(axes)] = driving.exp[:, k, list(axes)]
    n = driving.kp.shape[0]
    rot, exp = source.rot.expand(n, 3, 3), source.exp.expand(n, -1, -1)
    scale, t = source.scale.expand(n, 1), source.t.expand(n, 3)
    if region in ("all", "pose"):
        rot, t = rot_rel, t_rel
    if region in ("all", "exp"):
        exp = exp_rel
    elif region in ("lip", "eyes"):
        idx = list(LIP_KEYPOINTS if region == "lip" else EYE_KEYPOINTS)
        exp = exp.clone()
        exp[:, idx] = exp_rel[:, idx]
    if region == "all":
        scale = scale_rel
    t = torch.cat([t[:, :2], torch.zeros_like(t[:, 2:])], dim=1)
    return Motion(kp=source.kp.expand(n, -1, -1), rot=rot, exp=exp, scale=scale, t=t)
