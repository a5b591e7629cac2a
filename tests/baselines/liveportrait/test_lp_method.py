"""The ``liveportrait`` method: motion composition, streaming one frame per step, cropping and paste-back."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from baselines.liveportrait import cropper
from baselines.liveportrait.models import LivePortraitConfig
from baselines.liveportrait.motion import Motion, compose
from personalive_cli import registry
from personalive_cli.models.keypoint_extractor import KeypointInfo


def _info(n: int, seed: int) -> KeypointInfo:
    g = torch.Generator().manual_seed(seed)
    return KeypointInfo(kp=torch.randn(n, 21, 3, generator=g) * 0.3, pitch=torch.randn(n, generator=g) * 10,
                        yaw=torch.randn(n, generator=g) * 10, roll=torch.randn(n, generator=g) * 10,
                        t=torch.randn(n, 3, generator=g) * 0.1, scale=1 + torch.rand(n, 1, generator=g),
                        exp=torch.randn(n, 21, 3, generator=g) * 0.02)


def test_first_driving_frame_reproduces_the_source():
    source, first = Motion.from_info(_info(1, 0)), Motion.from_info(_info(1, 1))
    x_s = source.keypoints()
    x_d = compose(source, first, first).keypoints()
    torch.testing.assert_close(x_d[..., :2], x_s[..., :2], atol=1e-5, rtol=0)
    # t_z is dropped from the new motion, so only z can differ (by s * 0 vs s * t_z: never, t_z is not added)
    torch.testing.assert_close(x_d, x_s, atol=1e-5, rtol=0)


def test_relative_motion_composition_order():
    source, first, drv = (Motion.from_info(_info(1, s)) for s in (0, 1, 2))
    new = compose(source, drv, first)
    torch.testing.assert_close(new.rot, source.rot @ first.rot.transpose(1, 2) @ drv.rot)
    torch.testing.assert_close(new.scale, source.scale * drv.scale / first.scale)
    torch.testing.assert_close(new.t[:, :2], source.t[:, :2] + drv.t[:, :2] - first.t[:, :2])
    assert torch.all(new.t[:, 2] == 0)
    # "exp" keeps the source pose, "pose" the source expression
    exp_only = compose(source, drv, first, region="exp")
    torch.testing.assert_close(exp_only.rot, source.rot)
    torch.testing.assert_close(exp_only.exp, new.exp)
    pose_only = compose(source, drv, first, region="pose")
    torch.testing.assert_close(pose_only.exp, source.exp)


def test_stitching_adds_delta_and_shared_translation(lp_tiny):
    sr = lp_tiny.stitching_retargeting_module
    k = sr.config.num_kp
    x_s, x_d = torch.randn(2, k, 3), torch.randn(2, k, 3)
    with torch.no_grad():
        out = sr.stitch(x_s, x_d)
        delta = sr.stitching(torch.cat([x_s.reshape(2, -1), x_d.reshape(2, -1)], 1))
    expected = x_d + delta[:, : 3 * k].reshape(2, k, 3)
    expected[..., :2] += delta[:, None, 3 * k : 3 * k + 2]
    torch.testing.assert_close(out, expected)


def test_crop_geometry_follows_the_face_axis():
    # A synthetic 106-point set: eye and lip anchors on a face tilted by 20 degrees.
    angle = math.radians(20)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    rng = np.random.default_rng(0)
    pts = rng.uniform(-50, 50, (106, 2))
    pts[[33, 35, 40, 39]] = [-30, -20]
    pts[[87, 89, 94, 93]] = [30, -20]
    pts[52], pts[61] = [-5, 40], [5, 40]
    pts = pts @ rot.T + [200, 150]
    centre, side, theta = cropper.landmark_square(pts, 2.3, -0.125)
    assert theta == pytest.approx(-angle, abs=1e-6) or theta == pytest.approx(angle, abs=1e-6)
    m = cropper.crop_matrix(centre, side, theta, 512)
    assert np.allclose(m @ [*centre, 1], [256, 256, 1])
    assert np.isclose(abs(np.linalg.det(m[:2, :2])), (512 / side) ** 2)
    # the eye-to-lip axis becomes vertical in the crop
    eye = (m @ [*pts[[33, 35, 40, 39, 87, 89, 94, 93]].mean(0), 1])[:2]
    lip = (m @ [*((pts[52] + pts[61]) / 2), 1])[:2]
    assert abs(eye[0] - lip[0]) < 1e-6 and lip[1] > eye[1]


def test_mask_template_shape():
    mask = cropper.mask_template()
    assert mask.shape == (512, 512) and mask.dtype == np.float32
    assert mask[16:497, 16:497].min() == 1 and mask[0, 0] == 0
    levels = np.round(mask[256] * 255).astype(int)
    assert list(levels[:17]) == [0, *range(15, 256, 16)] and list(levels[-16:]) == list(range(255, 0, -16))
    assert (mask == 1).mean() == pytest.approx(0.8826, abs=1e-4) and mask.mean() == pytest.approx(0.9383, abs=1e-4)


@pytest.fixture(scope="module")
def demo_frames(demo_ref, demo_drive):
    from personalive_cli.io.images import read_image
    from personalive_cli.io.video import VideoReader

    return read_image(demo_ref), list(VideoReader(demo_drive).iter_frames(0, 3))


def test_streams_one_frame_per_push_with_pasteback(demo_frames):
    import logging

    ref, frames = demo_frames
    method = registry.get("liveportrait")(random_weights=True, config=LivePortraitConfig.tiny(), size=512, seed=0)
    assert method.frames_per_step == 1 and method.crop_backend == "offline-detector"
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("baselines.liveportrait.method")
    logger.addHandler(handler)
    try:
        session = method.start(ref)
    finally:
        logger.removeHandler(handler)
    assert any("offline face detector" in s for s in said)  # library code logs; the CLI renders it
    assert session.pasteback and session.crop.backend == "offline-detector"
    outs = []
    for f in frames:
        got = list(session.push(f))
        assert len(got) == 1  # one frame in, one frame out, immediately
        outs += got
    assert list(session.flush()) == []
    assert all(o.shape == (512, 512, 3) and o.dtype == np.uint8 for o in outs)
    # paste-back: pixels outside the warped mask are the reference's
    assert np.array_equal(outs[0][session.mask[..., 0] == 0], ref[session.mask[..., 0] == 0])


def test_no_crop_gives_the_generated_frame_at_size(demo_frames):
    ref, frames = demo_frames
    method = registry.get("liveportrait")(random_weights=True, config="tiny", size=256, crop="none")
    session = method.start(ref)
    assert not session.pasteback
    from personalive_cli.faces.crop import resize

    out = session.push(np.stack([resize(f, 256) for f in frames[:2]]))  # sessions take frames at their size
    assert [o.shape for o in out] == [(256, 256, 3)] * 2


def test_rejects_diffusion_options_and_missing_landmark_models():
    from personalive_cli.cli.app import _model_options
    from personalive_cli.errors import UserError

    cls = registry.get("liveportrait")
    assert not cls.model_flags  # not a diffusion model: the CLI refuses --vae/--attention for it
    with pytest.raises(UserError, match="no --vae"):
        _model_options("liveportrait", "tiny", "sdpa")
    with pytest.raises(UserError, match="landmark models"):
        cls(random_weights=True, config="tiny", eye_retargeting=True)
