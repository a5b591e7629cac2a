"""LPIPS / tLP plumbing on a random-weight AlexNet trunk (no download) and synthetic sequences."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lpips")
import torch  # noqa: E402

from benchmarks.metrics.errors import MetricUnavailable  # noqa: E402
from benchmarks.metrics.lpips_metrics import LPIPSMetric, build_lpips_alex, load_alexnet_trunk  # noqa: E402


@pytest.fixture(scope="module")
def metric():
    torch.manual_seed(0)
    # random trunk (pnet_rand), the lpips package's own linear heads: the real LPIPS code path, no download
    return LPIPSMetric(build_lpips_alex(random_trunk=True), size=None, device="cpu", batch_size=4)


def _moving(n=6, h=64, w=64, seed=0):
    """A textured square sliding right 4 px per frame over a noise background."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    tex = rng.integers(0, 255, size=(24, 24, 3), dtype=np.uint8)
    frames = np.repeat(bg[None], n, axis=0)
    for t in range(n):
        frames[t, 20:44, 4 + 4 * t:28 + 4 * t] = tex
    return frames


def test_identical_frames_give_zero(metric):
    v = _moving()
    assert metric(v, v) == pytest.approx(0.0, abs=1e-6)
    assert metric.tlp(v, v) == pytest.approx(0.0, abs=1e-4)


def test_different_frames_give_positive_lpips(metric):
    a, b = _moving(seed=0), _moving(seed=1)
    d = metric.distances(a, b)
    assert d.shape == (6,) and (d > 0).all()
    assert metric(a, b) == pytest.approx(metric(b, a), rel=1e-5)


def test_frozen_vs_moving_tlp(metric):
    moving = _moving()
    frozen = np.repeat(moving[:1], len(moving), axis=0)
    cons = metric.consecutive(moving)
    assert cons.shape == (5,) and (cons > 0).all()
    # a frozen video has no temporal change: tLP against the moving target is the target's own change
    assert metric.tlp(frozen) == pytest.approx(0.0, abs=1e-6)
    assert metric.tlp(frozen, moving) == pytest.approx(100 * cons.mean(), rel=1e-5)
    assert metric.tlp(moving, None) == pytest.approx(100 * cons.mean(), rel=1e-5)
    assert metric.tlp(frozen, moving) == pytest.approx(metric.tlp(moving, frozen), rel=1e-5)
    # cross-reenactment choices: against the driving video (default) or reference-free
    assert metric.tlp_cross(frozen, moving) == pytest.approx(metric.tlp(frozen, moving))
    assert metric.tlp_cross(frozen, moving, against="none") == pytest.approx(0.0, abs=1e-6)
    # a generated video that moves like the target scores better than one that does not move
    assert metric.tlp(_moving(seed=0), moving) < metric.tlp(frozen, moving)


def test_resize_and_shape_checks(metric):
    a = _moving(n=2, h=64, w=64)
    b = _moving(n=2, h=48, w=48)
    with pytest.raises(ValueError, match="size"):
        metric.distances(a, b)
    resized = LPIPSMetric(metric.model, size=32)
    assert resized.distances(a, b).shape == (2,)
    with pytest.raises(ValueError, match="frame counts"):
        metric.distances(a, a[:1])
    with pytest.raises(ValueError, match="uint8"):
        metric.distances(a.astype(np.float32), a)


def test_alexnet_file_loads_into_trunk(tmp_path):
    import torchvision

    with torch.device("meta"):
        names = {k: tuple(v.shape) for k, v in torchvision.models.alexnet().state_dict().items()
                 if k.startswith("features.")}
    model = build_lpips_alex(random_trunk=True)
    # a torchvision-layout state dict (features.* only), random values
    sd = {k: torch.randn(shape) for k, shape in names.items()}
    load_alexnet_trunk(model, sd)
    for key, value in model.net.state_dict().items():
        _, idx, kind = key.split(".")
        assert torch.equal(value, sd[f"features.{idx}.{kind}"])
    assert len(model.net.state_dict()) == len(sd)
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(sd, path)
    loaded = build_lpips_alex(weights_dir=tmp_path)
    assert torch.equal(loaded.net.slice1[0].weight, sd["features.0.weight"])
    with pytest.raises(ValueError, match="shape"):
        load_alexnet_trunk(model, {**sd, "features.0.weight": torch.zeros(1)})


def test_missing_alexnet_message(empty_caches):
    with pytest.raises(MetricUnavailable) as e:
        build_lpips_alex(weights_dir=empty_caches)
    msg = str(e.value)
    assert "alexnet-owt-7be5be79.pth" in msg and "download.pytorch.org" in msg and "\n" not in msg
    with pytest.raises(MetricUnavailable, match="nope.pth"):
        LPIPSMetric(weights=empty_caches / "nope.pth")
