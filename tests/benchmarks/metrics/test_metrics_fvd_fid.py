"""FVD clip sampling / preprocessing / feature plumbing and FID plumbing, with stand-in feature extractors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from benchmarks.metrics.errors import MetricUnavailable
from benchmarks.metrics.fid import InceptionFeatures, fid
from benchmarks.metrics.fvd import I3DFeatures, fvd, preprocess_clips, sample_clips, video_features


def _video(n, h=32, w=32, seed=0, level=None):
    rng = np.random.default_rng(seed)
    if level is not None:
        return np.full((n, h, w, 3), level, np.uint8)
    return rng.integers(0, 255, size=(n, h, w, 3), dtype=np.uint8)


class FakeI3D(torch.nn.Module):
    """TEST DOUBLE for StyleGAN-V's I3D: per-channel mean and std of the clip, with the I3D call signature."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[tuple, bool, bool, bool]] = []

    def forward(self, x, rescale: bool = False, resize: bool = False, return_features: bool = False):
        self.calls.append((tuple(x.shape), rescale, resize, return_features))
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)


class ScriptableI3D(torch.nn.Module):
    """TEST DOUBLE saved as a TorchScript file: same signature, features = per-channel mean/std."""

    def forward(self, x, rescale: bool = False, resize: bool = False, return_features: bool = False):
        if rescale:
            x = x / 127.5 - 1
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)


def test_sample_clips():
    v = np.arange(40)[:, None, None, None].repeat(4, 1).repeat(4, 2).repeat(3, 3).astype(np.uint8)
    clips = sample_clips(v)
    assert [c[0, 0, 0, 0] for c in clips] == [0, 16] and all(c.shape == (16, 4, 4, 3) for c in clips)
    np.testing.assert_array_equal(clips[1][:, 0, 0, 0], np.arange(16, 32))
    assert [c[0, 0, 0, 0] for c in sample_clips(v, stride=8)] == [0, 8, 16, 24]
    assert len(sample_clips(v, max_clips=1)) == 1
    assert sample_clips(v[:15]) == []
    assert len(sample_clips(v[:16])) == 1


def test_preprocess_clips_resize_crop_range():
    black_white = np.zeros((1, 16, 30, 60, 3), np.uint8)
    black_white[..., 15:45, :] = 255  # a white centre square in a wide frame
    x = preprocess_clips(black_white, resolution=224)
    assert x.shape == (1, 3, 16, 224, 224) and x.dtype == torch.float32
    # shorter side to 224, centre crop: the centre square fills the crop, values in [-1, 1]
    assert x[..., 10:-10, 10:-10].min() == pytest.approx(1.0) and x.min() >= -1.0
    assert preprocess_clips(np.zeros((2, 16, 8, 8, 3), np.uint8), 224).max() == pytest.approx(-1.0)


def test_i3d_features_call_convention_and_fvd():
    fake = FakeI3D()
    ext = I3DFeatures(model=fake, batch_size=2)
    real = [_video(40, seed=s) for s in range(3)]
    feats = video_features(real, ext)
    assert feats.shape == (6, 6)  # 3 videos x 2 clips, 6-d stand-in features
    assert all(c[0][1:] == (3, 16, 224, 224) and c[1:] == (False, False, True) for c in fake.calls)
    assert fvd(real, real, extractor=ext) == pytest.approx(0.0, abs=1e-6)
    brighter = [np.clip(v.astype(int) + 40, 0, 255).astype(np.uint8) for v in real]
    assert fvd(real, brighter, extractor=ext) > 0.01
    # StyleGAN-V's own call: uint8 values, the model rescales/resizes itself
    inner = FakeI3D()
    I3DFeatures(model=inner, preprocess="internal")(np.stack(sample_clips(real[0])))
    assert inner.calls[0][1:] == (True, True, True) and inner.calls[0][0] == (2, 3, 16, 32, 32)
    with pytest.raises(ValueError, match="no 16-frame clip"):
        video_features([_video(10)], ext)


def test_i3d_torchscript_file_is_loaded(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated; StyleGAN-V's I3D is TorchScript
        torch.jit.script(ScriptableI3D()).save(str(path))
    ext = I3DFeatures(weights_dir=tmp_path)
    f = ext(np.stack(sample_clips(_video(16))))
    assert f.shape == (1, 6)


def test_missing_i3d_message(empty_caches):
    with pytest.raises(MetricUnavailable) as e:
        I3DFeatures(weights_dir=empty_caches)
    msg = str(e.value)
    assert msg.startswith("FVD: ") and "i3d_torchscript.pt" in msg and "dropbox.com" in msg and "\n" not in msg


class FakeInception(torch.nn.Module):
    """TEST DOUBLE for pytorch-fid's InceptionV3: [per-channel mean/std as (b, 6, 1, 1)] on [0, 1] input."""

    def forward(self, x):
        assert x.min() >= 0 and x.max() <= 1
        return [torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)[..., None, None]]


def test_fid_plumbing():
    ext = InceptionFeatures(model=FakeInception(), batch_size=5)
    real = [_video(12, seed=s) for s in range(2)]
    assert ext(real[0]).shape == (12, 6)
    assert fid(real, real, extractor=ext) == pytest.approx(0.0, abs=1e-6)
    darker = [(v // 2).astype(np.uint8) for v in real]
    assert fid(real, darker, extractor=ext) > 0.01
    assert fid(real, real, extractor=ext, frame_stride=3) == pytest.approx(0.0, abs=1e-6)


def test_missing_fid_inception_message(empty_caches):
    pytest.importorskip("pytorch_fid")
    with pytest.raises(MetricUnavailable) as e:
        InceptionFeatures(weights_dir=empty_caches)
    msg = str(e.value)
    assert msg.startswith("FID: ") and "pt_inception-2015-12-05-6726825d.pth" in msg and "\n" not in msg


def _random_fid_state_dict() -> dict:
    """Random weights with the FID Inception's exact keys, from pytorch-fid's own builder (its download
    replaced, here in the test, by nothing)."""
    pytest.importorskip("pytorch_fid")
    from unittest import mock

    import torchvision
    from pytorch_fid import inception as fid_inception

    torch.manual_seed(0)
    with mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(torchvision.models.Inception3, "load_state_dict", lambda self, sd, *a, **k: None):
        net = fid_inception.fid_inception_v3()
    # BatchNorm running stats away from their 0/1 defaults, so that using them wrongly would show
    return {k: (torch.rand_like(v) + 0.5 if "running_var" in k else torch.randn_like(v) * 0.1
                if "running_mean" in k else v) for k, v in net.state_dict().items()}


def test_fid_network_matches_pytorch_fid_inception_v3():
    """Our local-file build gives pytorch-fid's InceptionV3([pool3]) output on the same weights."""
    from unittest import mock

    from pytorch_fid import inception as fid_inception

    from benchmarks.metrics.fid_network import FIDInceptionPool3

    state = _random_fid_state_dict()
    with mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *a, **k: state):
        theirs = fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    ours = FIDInceptionPool3(state).eval()
    x = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = theirs(x)[0], ours(x)[0]
    assert a.shape == b.shape == (2, 2048, 1, 1)
    torch.testing.assert_close(b, a, rtol=0, atol=0)  # the same operations in the same order


def test_fid_inception_loads_from_local_file(tmp_path):
    """The FID Inception built from a local (random-weight) file: no download attempted."""
    from unittest import mock

    state = _random_fid_state_dict()
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    with mock.patch.object(torch.hub, "download_url_to_file", side_effect=AssertionError("no download")):
        ext = InceptionFeatures(weights_dir=tmp_path, batch_size=2)
    v = _video(2, 48, 48)
    f = ext(v)
    assert f.shape == (2, 2048) and np.isfinite(f).all()
    # the file's weights are the ones in use
    assert torch.equal(ext.model.layers[0].conv.weight, state["Conv2d_1a_3x3.conv.weight"])
