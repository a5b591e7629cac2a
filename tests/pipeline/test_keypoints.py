"""Keypoint algebra, the dot canvas and face crops (what the pipeline does with the extractor's output)."""

import math

import torch
from helpers import random_keypoint_info

from personalive_cli.models.keypoint_extractor import KeypointInfo, posed_keypoints
from personalive_cli.pipeline.keypoints import (
    DOT_COLORS,
    DOT_INDICES,
    crop_faces,
    draw_keypoints,
    face_boxes,
    first_call_keypoints,
    transfer_keypoints,
    transfer_pose,
    warmup_keypoints,
)


def _info(n=1, seed=0, dtype=torch.float64) -> KeypointInfo:
    return random_keypoint_info(n, seed, dtype)


# ------------------------------------------------------------------------------------------------ algebra


def test_transfer_of_the_reference_itself_gives_reference_pose():
    ref = _info(1)
    torch.testing.assert_close(transfer_keypoints(ref, ref, ref), ref.posed())


def test_transfer_rule():
    ref, first, drv = _info(1, seed=1), _info(1, seed=2), _info(4, seed=3)
    pose = transfer_pose(ref, drv, first)
    torch.testing.assert_close(pose.kp, ref.kp.expand(4, -1, -1))
    torch.testing.assert_close(pose.yaw, drv.yaw)  # absolute driving rotation
    torch.testing.assert_close(pose.t, ref.t + 0.5 * (drv.t - first.t))
    torch.testing.assert_close(pose.scale, ref.scale.expand(4, 1))
    assert pose.exp is None
    out = transfer_keypoints(ref, drv, first)
    assert out.shape == (4, 21, 3)
    # The driving scale, the driving canonical keypoints and the first frame's rotation play no part.
    other = KeypointInfo(kp=drv.kp * 3, pitch=drv.pitch, yaw=drv.yaw, roll=drv.roll, t=drv.t, scale=drv.scale * 7)
    first_rotated = KeypointInfo(kp=first.kp, pitch=first.pitch + 30, yaw=first.yaw, roll=first.roll,
                                 t=first.t, scale=first.scale * 2)
    torch.testing.assert_close(transfer_keypoints(ref, other, first_rotated), out)
    # ...but its rotation does.
    turned = KeypointInfo(kp=drv.kp, pitch=drv.pitch, yaw=drv.yaw + 10, roll=drv.roll, t=drv.t, scale=drv.scale)
    assert not torch.allclose(transfer_keypoints(ref, turned, first), out)


def test_warmup_interpolation():
    ref, first = _info(1, seed=4), _info(1, seed=5)
    warm = warmup_keypoints(ref, first)
    assert warm.shape == (12, 21, 3)
    torch.testing.assert_close(warm[0], ref.posed()[0])
    for k in (1, 6, 11):
        a = k / 12
        want = posed_keypoints(ref.kp, ref.pitch + a * (first.pitch - ref.pitch), ref.yaw + a * (first.yaw - ref.yaw),
                               ref.roll + a * (first.roll - ref.roll), ref.t, ref.scale)
        torch.testing.assert_close(warm[k], want[0])  # t and scale stay at the reference's
    full = first_call_keypoints(ref, KeypointInfo.cat([first, _info(3, seed=6)]))
    assert full.shape == (16, 21, 3)
    torch.testing.assert_close(full[:12], warm)
    torch.testing.assert_close(full[12], transfer_keypoints(ref, first, first)[0])


# ------------------------------------------------------------------------------------------------ drawing


def _kps_with(points: dict[int, tuple[float, float]]) -> torch.Tensor:
    kps = torch.full((1, 21, 3), 10.0)  # far off-canvas
    for idx, (x, y) in points.items():
        kps[0, idx, 0], kps[0, idx, 1] = x, y
    return kps


def _brute_force_draw(kps: torch.Tensor, size: int, radius: float) -> torch.Tensor:
    canvas = torch.zeros(kps.shape[0], 3, size, size)
    for b in range(kps.shape[0]):
        for i, idx in enumerate(DOT_INDICES):
            px = int((kps[b, idx, 0].item() * 0.5 + 0.5) * size)
            py = int((kps[b, idx, 1].item() * 0.5 + 0.5) * size)
            for row in range(max(0, py - 5), min(size, py + 6)):
                for col in range(max(0, px - 5), min(size, px + 6)):
                    if (col - px) ** 2 + (row - py) ** 2 <= radius * radius:
                        canvas[b, :, row, col] += torch.tensor(DOT_COLORS[i], dtype=torch.float32) / 255.0
    return canvas.clamp(0, 1)


def test_single_dot_at_origin_is_a_49_pixel_disc_at_the_centre():
    canvas = draw_keypoints(_kps_with({1: (0.0, 0.0)}), 512)
    assert canvas.shape == (1, 3, 512, 512) and canvas.dtype == torch.float32
    mask = canvas.sum(1)[0] > 0
    assert int(mask.sum()) == 49
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert rows.float().mean() == 256 and cols.float().mean() == 256
    assert mask[256, 260] and mask[260, 256] and mask[252, 256]  # radius 4 included
    assert not mask[256, 261] and not mask[259, 259] and not mask[257, 260]  # 25, 18, 17 > 16
    torch.testing.assert_close(canvas[0, :, 256, 256], torch.tensor([1.0, 0.0, 0.0]))


def test_dot_colours_and_saturation():
    last = draw_keypoints(_kps_with({20: (0.0, 0.0)}), 512)
    torch.testing.assert_close(last[0, :, 256, 256], torch.tensor([1.0, 0.0, 85 / 255]))
    # Red + yellow on the same spot: R = 2 clamps to 1.
    both = draw_keypoints(_kps_with({1: (0.0, 0.0), 2: (0.0, 0.0)}), 512)
    torch.testing.assert_close(both[0, :, 256, 256], torch.tensor([1.0, 1.0, 0.0]))
    every = draw_keypoints(_kps_with({i: (0.0, 0.0) for i in DOT_INDICES}), 512)
    assert int((every.sum(1)[0] > 0).sum()) == 49
    assert float(every.max()) == 1.0 and bool((every[0, :, 256, 256] == 1).all())
    # Keypoints that are not drawn have no effect.
    torch.testing.assert_close(draw_keypoints(_kps_with({0: (0.0, 0.0), 5: (0.1, 0.1)}), 512),
                               torch.zeros(1, 3, 512, 512))


def test_clipping_and_truncation_toward_zero():
    corner = draw_keypoints(_kps_with({3: (-1.0, -1.0)}), 512)
    assert int((corner.sum(1)[0] > 0).sum()) == 17  # quarter disc around pixel (0, 0)
    # x = -1.001 maps to -0.256 px, which truncates to 0 (not floor to -1).
    torch.testing.assert_close(draw_keypoints(_kps_with({3: (-1.001, -1.001)}), 512), corner)


def test_draw_matches_brute_force_and_scales_with_size():
    g = torch.Generator().manual_seed(0)
    kps = torch.randn(3, 21, 3, generator=g) * 0.5
    torch.testing.assert_close(draw_keypoints(kps, 96, radius=4), _brute_force_draw(kps, 96, 4), rtol=0, atol=0)
    small = draw_keypoints(_kps_with({1: (0.0, 0.0)}), 256)  # default radius 4 * 256 / 512 = 2
    assert small.shape == (1, 3, 256, 256) and int((small.sum(1)[0] > 0).sum()) == 13
    assert int((draw_keypoints(_kps_with({1: (0.0, 0.0)}), 256, radius=4).sum(1)[0] > 0).sum()) == 49


def test_face_box_on_known_keypoints():
    xs = [200, 300, 200, 300, 250, 250, 250]  # pixel positions of the 7 drawn points (mean 250)
    ys = [200, 200, 300, 300, 250, 250, 250]  # mean 250, top 200 -> side = 3.4 * 50 = 170
    kps = _kps_with({idx: (x / 256 - 1, y / 256 - 1) for idx, x, y in zip(DOT_INDICES, xs, ys, strict=True)})
    box = face_boxes(kps, 512)
    assert box.dtype == torch.int64
    # x1 = 250 - 0.475 * 170 = 169.25, x2 = 250 + 0.525 * 170 = 339.25 (same for y), truncated.
    assert box.tolist() == [[169, 169, 339, 339]]
    near_edge = _kps_with({idx: ((x - 180) / 256 - 1, (y + 200) / 256 - 1)
                           for idx, x, y in zip(DOT_INDICES, xs, ys, strict=True)})
    assert face_boxes(near_edge, 512).tolist() == [[0, 369, 159, 511]]


def test_crop_faces():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    whole = crop_faces(images, torch.tensor([[0, 0, 64, 64], [0, 0, 64, 64]]), out=64)
    torch.testing.assert_close(whole, images)  # same-size bilinear resize is the identity
    part = crop_faces(images, torch.tensor([[10, 5, 42, 37], [0, 0, 32, 32]]), out=32)
    torch.testing.assert_close(part[0], images[0, :, 5:37, 10:42])
    torch.testing.assert_close(part[1], images[1, :, :32, :32])
    resized = crop_faces(images, torch.tensor([[8, 8, 40, 40], [0, 0, 16, 16]]))
    assert resized.shape == (2, 3, 224, 224) and resized.dtype == images.dtype
    want = torch.nn.functional.interpolate(images[:1, :, 8:40, 8:40], size=(224, 224), mode="bilinear",
                                           align_corners=False, antialias=False)
    torch.testing.assert_close(resized[:1], want)
    degenerate = crop_faces(images[:1], torch.tensor([[20, 30, 20, 30]]), out=8)
    torch.testing.assert_close(degenerate, images[:1, :, 30:31, 20:21].expand(1, 3, 8, 8))


def test_draw_and_boxes_follow_keypoint_dtype():
    kps = torch.randn(2, 21, 3) * 0.4
    for dtype in (torch.float16, torch.float32):
        canvas = draw_keypoints(kps.to(dtype), 64)
        assert canvas.dtype == torch.float32
        assert face_boxes(kps.to(dtype), 64).shape == (2, 4)
    assert math.isclose(DOT_COLORS[-1][2] / 255, 1 / 3)
