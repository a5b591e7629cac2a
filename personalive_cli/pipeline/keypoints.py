"""PersonaLive's keypoint algebra, drawing and face crops: what the streaming pipeline does with the
keypoint extractor's output (`KeypointInfo`, posed with `KeypointInfo.posed`).

Not part of any network, so not in `models/`: these are steps of the schedule (spec §3.3, §3.6), used by
the engine and its tests only.

Keypoint algebra (spec §4), all batched over n:
* PersonaLive transfer: reference canonical keypoints, the driving frame's absolute rotation,
  t = t_ref + 0.5 (t_drv - t_first), scale = s_ref, no expression.
* first call: 12 poses interpolated (in degrees) from the reference to driving frame 1, then the transfers.
Drawing (spec §1.6: the PoseGuider's dot canvas) and face boxes / crops for the motion encoder (spec §3.6)
are at the bottom.
"""

from __future__ import annotations

import functools
import math

import torch

from personalive_cli.models.keypoint_extractor import KeypointInfo, posed_keypoints

__all__ = [
    "DOT_COLORS",
    "DOT_INDICES",
    "REFERENCE_CANVAS",
    "crop_faces",
    "draw_keypoints",
    "face_boxes",
    "first_call_keypoints",
    "transfer_keypoints",
    "transfer_pose",
    "warmup_keypoints",
]

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
# Keypoint algebra


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
    pts = kps.index_select(1, _dot_index(kps.device))[..., :2] * 0.5 + 0.5
    # scalars, not a tensor built from host data: nothing is copied to the device inside the stream step
    return torch.stack([pts[..., 0] * w, pts[..., 1] * h], dim=-1).long()


@functools.lru_cache(maxsize=16)
def _dot_index(device: torch.device) -> torch.Tensor:
    """DOT_INDICES on ``device``, made once (indexing with a list would copy it from the host every call)."""
    return torch.tensor(DOT_INDICES, device=device)


@functools.lru_cache(maxsize=16)
def _disc(radius: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel offsets (dy, dx) of a disc of ``radius`` and the dot colours (7, 3) in [0, 1], built once per
    device: a boolean selection on the device would wait for it (a host sync), and a tensor made from host
    data inside a captured CUDA graph is not allowed."""
    reach = int(math.floor(radius))
    d = torch.arange(-reach, reach + 1)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    disc = (dx * dx + dy * dy) <= radius * radius
    colors = torch.tensor(DOT_COLORS, dtype=torch.float32) / 255.0
    return dy[disc].to(device), dx[disc].to(device), colors.to(device)


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
    dy, dx, colors = _disc(r, torch.device(device))
    batch = torch.arange(n, device=device)[:, None].expand(n, dy.numel())
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
    end-exclusive -> (n, 3, out, out), in the images' dtype.

    The result is ``F.interpolate(image[:, :, y1:y2, x1:x2], out, mode="bilinear", align_corners=False)``
    (no antialias) of every box, up to float rounding (a few 1e-6 on values in [-1, 1]), computed for all boxes at once by gathering the four neighbours of every
    output pixel: box sizes differ from frame to frame, so slicing would need them on the host (a sync of
    the device in every stream step) and one interpolation per box. A degenerate box (empty after
    clamping, where the official code would fail) is widened to one pixel.
    """
    if images.shape[0] != boxes.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {boxes.shape[0]} boxes")
    n, _, h, w = images.shape
    if n == 0:
        return images.new_zeros(0, images.shape[1], out, out)
    boxes = boxes.to(images.device).long()
    x1, y1 = boxes[:, 0].clamp(0, w - 1), boxes[:, 1].clamp(0, h - 1)
    # a slice past the edge stops at the edge
    width = torch.maximum(boxes[:, 2], x1 + 1).clamp(max=w) - x1
    height = torch.maximum(boxes[:, 3], y1 + 1).clamp(max=h) - y1
    ya, yb, wy = _source_pixels(y1, height, out)
    xa, xb, wx = _source_pixels(x1, width, out)
    rows = torch.arange(n, device=images.device)[:, None, None]
    ya, yb, xa, xb = ya[:, :, None], yb[:, :, None], xa[:, None, :], xb[:, None, :]
    wy, wx = wy[:, :, None, None], wx[:, None, :, None]
    x = images.float()
    # (n, out, out, c): advanced indices around a slice put their dims first
    top = (1 - wx) * x[rows, :, ya, xa] + wx * x[rows, :, ya, xb]
    bottom = (1 - wx) * x[rows, :, yb, xa] + wx * x[rows, :, yb, xb]
    crops = (1 - wy) * top + wy * bottom
    return crops.permute(0, 3, 1, 2).contiguous().to(images.dtype)


def _source_pixels(start: torch.Tensor, length: torch.Tensor, out: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For boxes starting at ``start`` (n,) with ``length`` (n,) pixels resized to ``out``: the two source
    pixels (n, out) of every output pixel and the weight of the second, as bilinear interpolation with
    align_corners False computes them (source = (i + 0.5) * length / out - 0.5, clamped at 0; the second
    neighbour clamped to the box)."""
    # in float32, as PyTorch's kernel computes them for float images
    scale = length.float() / out
    src = ((torch.arange(out, device=start.device, dtype=torch.float32) + 0.5)[None] * scale[:, None] - 0.5)
    src = src.clamp(min=0)
    first = src.long()
    second = first + (first < length[:, None] - 1).long()
    return start[:, None] + first, start[:, None] + second, src - first
