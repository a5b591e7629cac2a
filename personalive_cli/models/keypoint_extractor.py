"""Implicit 3-D keypoints: LivePortrait's motion extractor plus PersonaLive's keypoint algebra and drawing.

Network (spec §1.7, §2.5; LivePortrait spec §3.2): a ConvNeXtV2-tiny under `detector.` reads a 256x256 RGB
image in [0, 1] and predicts 21 canonical keypoints, head pose (pitch / yaw / roll as 66 bins of 3
degrees), a translation, a scale, and (opt-in, LivePortrait only) 21 expression offsets. The checkpoint is
`motion_extractor.pth` (212 `detector.*` keys, 28,118,728 elements; PersonaLive's copy also holds
`idx_tensor` = arange(66), which is accepted and checked on load but is not part of this module's state).

Precision: the ConvNeXt LayerNorms (stem, downsample and block norms) keep fp32 weights when the module is
cast to fp16/bf16 and compute in fp32, returning the input dtype (as the official PersonaLive module does).
The final `detector.norm` is an ordinary LayerNorm.

Keypoint algebra (spec §4), all batched over n, with R = Rz(roll) * Ry(yaw) * Rx(pitch) applied as R * k:
* posed keypoints  k' = s * (R k_c [+ exp]) + (t_x, t_y, 0)
* PersonaLive transfer: reference canonical keypoints, the driving frame's absolute rotation,
  t = t_ref + 0.5 (t_drv - t_first), scale = s_ref, no expression.
* first call: 12 poses interpolated (in degrees) from the reference to driving frame 1, then the transfers.
Drawing (spec §1.6) and face boxes / crops for the motion encoder (spec §3.6) are at the bottom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DOT_COLORS",
    "DOT_INDICES",
    "KeypointExtractor",
    "KeypointExtractorConfig",
    "KeypointInfo",
    "crop_faces",
    "draw_keypoints",
    "face_boxes",
    "first_call_keypoints",
    "headpose_to_degrees",
    "posed_keypoints",
    "rotation_matrix",
    "transfer_keypoints",
    "transfer_pose",
    "warmup_keypoints",
]

NUM_BINS = 66
# The 7 of the 21 keypoints that are drawn and that define the face box, and their colours (RGB, 0..255).
DOT_INDICES: tuple[int, ...] = (1, 2, 3, 4, 12, 15, 20)
DOT_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (255, 255, 0),
    (0, 255, 0),
    (0, 255, 255),
    (0, 0, 255),
    (255, 0, 255),
    (255, 0, 85),
)
REFERENCE_CANVAS = 512  # the official canvas size; dot radius 4 there


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


class ConvNeXtBlock(nn.Module):
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


class KeypointExtractor(nn.Module):
    """Images (n, 3, 256, 256) RGB in [0, 1] -> KeypointInfo (kp (n,21,3), degrees (n,), t, scale[, exp]).

    The input is cast to the weights' dtype; outputs are in that dtype. Loading accepts PersonaLive's extra
    `idx_tensor` key (checked to be arange(66)) as well as LivePortrait's file without it.
    """

    def __init__(self, config: KeypointExtractorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or KeypointExtractorConfig()
        if config.num_bins != NUM_BINS:
            raise ValueError(f"head-pose decoding assumes {NUM_BINS} bins, got {config.num_bins}")
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
# Keypoint algebra


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


def transfer_pose(ref: KeypointInfo, drv: KeypointInfo, first: KeypointInfo, t_scale: float = 0.5,
                  s_scale: float = 0.0) -> KeypointInfo:
    """PersonaLive's pose transfer (parameters only).

    ref: the reference (length 1); drv: n driving frames; first: the session's first driving frame
    (length 1). Result (length n): kp = ref.kp, pitch/yaw/roll = drv's (absolute),
    t = (t_drv - t_first) * t_scale + t_ref, scale = s_drv * s_scale + s_ref (s_scale 0: the driving scale
    is ignored), no exp.

    Bit-exact note: the official streaming code gets `first` for later calls from a separate detector run on
    driving frame 1 alone (batch 1), while the first call uses frame 1's row of the 4-frame batch (as
    `first_call_keypoints` does). Batch size can change the detector's last bits, so keep the batch-1 result.
    """
    n = len(drv)
    return KeypointInfo(
        kp=ref.kp.expand(n, -1, -1),
        pitch=drv.pitch,
        yaw=drv.yaw,
        roll=drv.roll,
        t=(drv.t - first.t) * t_scale + ref.t,
        scale=drv.scale * s_scale + ref.scale,
    )


def transfer_keypoints(ref: KeypointInfo, drv: KeypointInfo, first: KeypointInfo, t_scale: float = 0.5,
                       s_scale: float = 0.0) -> torch.Tensor:
    """(n, K, 3) keypoints to draw for n driving frames: `transfer_pose(...)` posed (no exp)."""
    return transfer_pose(ref, drv, first, t_scale, s_scale).posed()


def warmup_keypoints(ref: KeypointInfo, first: KeypointInfo, num_interp: int = 13, t_scale: float = 0.5,
                     s_scale: float = 0.0) -> torch.Tensor:
    """(num_interp - 1, K, 3) warm-up keypoints of the first streaming call.

    Every pose parameter goes linearly, alpha = linspace(0, 1, num_interp)[:-1] (in the reference's dtype),
    from the reference's own values to the transferred values of driving frame 1: pitch/yaw/roll in
    degrees from the reference's to frame 1's; t and scale stay at the reference's (their transferred
    value for frame 1 is the reference's). Canonical keypoints are the reference's. Entry 0 is the
    reference's own posed keypoints.
    """
    target = transfer_pose(ref, first, first, t_scale, s_scale)
    alpha = torch.linspace(0, 1, num_interp, dtype=ref.pitch.dtype, device=ref.pitch.device)[:-1]

    def lerp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        w = alpha.reshape((-1,) + (1,) * (a.ndim - 1))
        return (1 - w) * a + w * b

    m = num_interp - 1
    return posed_keypoints(
        ref.kp.expand(m, -1, -1),
        lerp(ref.pitch, target.pitch),
        lerp(ref.yaw, target.yaw),
        lerp(ref.roll, target.roll),
        lerp(ref.t, target.t),
        lerp(ref.scale, target.scale),
    )


def first_call_keypoints(ref: KeypointInfo, drv: KeypointInfo, num_interp: int = 13, t_scale: float = 0.5,
                         s_scale: float = 0.0) -> torch.Tensor:
    """((num_interp - 1) + n, K, 3): the warm-up sets followed by the n transferred driving sets, with
    drv's frame 0 as the session's first frame (spec §3.3 step 2, first call)."""
    first = drv.select(0)
    return torch.cat([warmup_keypoints(ref, first, num_interp, t_scale, s_scale),
                      transfer_keypoints(ref, drv, first, t_scale, s_scale)], dim=0)


# ----------------------------------------------------------------------------------------------------------
# Drawing and face boxes


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _dot_pixels(kps: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(n, 7, 2) integer pixel positions (x, y) of the drawn keypoints: trunc((v * 0.5 + 0.5) * size),
    computed in the keypoints' dtype and rounded toward zero, as the official code does."""
    pts = kps[:, list(DOT_INDICES), :2] * 0.5 + 0.5
    pts = pts * torch.tensor([w, h], dtype=pts.dtype, device=pts.device)
    return pts.long()


def draw_keypoints(kps: torch.Tensor, size: int | tuple[int, int] = REFERENCE_CANVAS,
                   radius: float | None = None) -> torch.Tensor:
    """The PoseGuider input: (n, K, 3) keypoints -> (n, 3, H, W) float32 canvas in [0, 1].

    Seven keypoints (DOT_INDICES) are drawn as filled discs in DOT_COLORS: every pixel with
    (col - px)^2 + (row - py)^2 <= radius^2, colours added, then clamped to [0, 1] (overlaps saturate,
    off-canvas parts are clipped). x, y are the first two components (z ignored).
    `size` is the canvas side (or (H, W)); the official canvas is 512 with radius 4. By default the radius
    scales with the canvas (radius = 4 * min(H, W) / 512), so other sizes get the scaled-down dots of the
    512 canvas; at 512 the result equals the official one exactly.
    """
    h, w = _hw(size)
    r = 4.0 * min(h, w) / REFERENCE_CANVAS if radius is None else float(radius)
    n, device = kps.shape[0], kps.device
    pts = _dot_pixels(kps, h, w)
    # Pixel offsets of one disc, then one scatter-add per dot: only the touched pixels, and the same sums as
    # a per-pixel distance test over the whole canvas (a dot covers a pixel once; dots are added in order).
    reach = int(math.floor(r))
    d = torch.arange(-reach, reach + 1, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    disc = (dx * dx + dy * dy) <= r * r
    dy, dx = dy[disc], dx[disc]
    batch = torch.arange(n, device=device)[:, None].expand(n, dy.numel())
    colors = torch.tensor(DOT_COLORS, dtype=torch.float32, device=device) / 255.0
    canvas = torch.zeros(n, h, w, 3, dtype=torch.float32, device=device)  # channels last while drawing
    for i in range(len(DOT_INDICES)):
        ys = pts[:, i, 1:2] + dy
        xs = pts[:, i, 0:1] + dx
        valid = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        # Off-canvas pixels are redirected to a clamped position and add 0 (no data-dependent shapes, so
        # no host sync on GPU).
        values = colors[i] * valid[..., None].to(torch.float32)
        canvas.index_put_((batch, ys.clamp(0, h - 1), xs.clamp(0, w - 1)), values, accumulate=True)
    canvas = canvas.permute(0, 3, 1, 2).contiguous()
    return canvas.clamp_(0, 1)


def face_boxes(kps: torch.Tensor, size: int | tuple[int, int] = REFERENCE_CANVAS) -> torch.Tensor:
    """Face boxes for the motion encoder from (n, K, 3) posed keypoints: (n, 4) int64 (x1, y1, x2, y2).

    On the 7 drawn keypoints' pixel positions (as `draw_keypoints`): c = their mean, top = min y,
    side = 3.4 (c_y - top); x1 = c_x - 0.475 side, x2 = c_x + 0.525 side (y likewise), each clamped to
    [0, size - 1] and truncated. Boxes are end-exclusive (see `crop_faces`). Pass the size of the image
    that will be cropped (the official code assumes 512).
    """
    h, w = _hw(size)
    pts = _dot_pixels(kps, h, w)
    cx = pts[..., 0].float().mean(dim=1)
    cy = pts[..., 1].float().mean(dim=1)
    top = pts[..., 1].float().min(dim=1).values
    side = (cy - top) * 2.0
    side = side * 1.7  # same operation order as the official code (the truncation is sensitive to it)
    x1 = (cx - side / 2 * 0.95).clamp(0, w - 1).long()
    y1 = (cy - side / 2 * 0.95).clamp(0, h - 1).long()
    x2 = (cx + side / 2 * 1.05).clamp(0, w - 1).long()
    y2 = (cy + side / 2 * 1.05).clamp(0, h - 1).long()
    return torch.stack([x1, y1, x2, y2], dim=1)


def crop_faces(images: torch.Tensor, boxes: torch.Tensor, out: int = 224) -> torch.Tensor:
    """Crop and resize: images (n, 3, H, W) (any range, e.g. [-1, 1]) and boxes (n, 4) (x1, y1, x2, y2),
    end-exclusive -> (n, 3, out, out), bilinear, align_corners False, no antialias, in the images' dtype.

    A degenerate box (empty after clamping, where the official code would fail) is widened to one pixel.
    """
    if images.shape[0] != boxes.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {boxes.shape[0]} boxes")
    h, w = images.shape[-2:]
    crops = []
    for image, box in zip(images, boxes.tolist(), strict=True):
        x1, y1, x2, y2 = (int(v) for v in box)
        x1, y1 = min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
        patch = image[None, :, y1:y2, x1:x2]
        crops.append(F.interpolate(patch, size=(out, out), mode="bilinear", align_corners=False))
    if not crops:
        return images.new_zeros(0, images.shape[1], out, out)
    return torch.cat(crops, dim=0)
