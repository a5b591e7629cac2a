"""FID with pytorch-fid's InceptionV3 (pool3, 2048-d; ``pt_inception-2015-12-05-6726825d.pth``).

Frames (uint8 RGB) -> [0, 1] float -> pytorch-fid's ``InceptionV3([3], resize_input=True,
normalize_input=True)`` network, built from the local weight file by ``fid_network`` (bilinear resize
to 299², scaling to [-1, 1] inside) -> pool3 features ->
mean and covariance (ddof=1, ``np.cov`` as pytorch-fid) -> Fréchet distance.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np

from benchmarks.metrics.common import as_video, resolve_device
from benchmarks.metrics.errors import MetricUnavailable
from benchmarks.metrics.frechet import frechet_distance, gaussian_stats
from benchmarks.metrics.weights import FID_INCEPTION, require_module

FID_DIMS = 2048
FID_DDOF = 1


def build_fid_inception(weights: str | os.PathLike | None = None, weights_dir: str | os.PathLike | None = None):
    """pytorch-fid's FID Inception up to pool3 with its weights read from a local file (no download)."""
    require_module("FID", "pytorch_fid", "pytorch-fid>=0.3")
    import torch

    from benchmarks.metrics.fid_network import FIDInceptionPool3

    path = FID_INCEPTION.resolve(weights, weights_dir)
    try:
        model = FIDInceptionPool3(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:
        raise MetricUnavailable("FID", f"cannot load {path}: {e}; {FID_INCEPTION.how}") from e
    return model.eval().requires_grad_(False)


class InceptionFeatures:
    """uint8 frames (n, h, w, 3) -> (n, 2048) pool3 features. ``model``: inject for tests
    (called on float (b, 3, h, w) in [0, 1], returning a list whose first item is (b, d, 1, 1) or (b, d))."""

    def __init__(self, model=None, *, weights=None, weights_dir=None, device="cpu", batch_size: int = 32):
        self.device = resolve_device(device)
        self.model = (model if model is not None else build_fid_inception(weights, weights_dir)).to(self.device)
        self.batch_size = max(1, int(batch_size))

    def __call__(self, frames) -> np.ndarray:
        import torch

        frames = as_video(frames, "frames")
        out = []
        with torch.no_grad():
            for i in range(0, len(frames), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(frames[i:i + self.batch_size])).to(self.device)
                x = x.permute(0, 3, 1, 2).float() / 255.0
                f = self.model(x)
                f = f[0] if isinstance(f, (list, tuple)) else f
                out.append(f.reshape(f.shape[0], -1).double().cpu().numpy())
        return np.concatenate(out)


def frame_features(videos: Iterable, extractor: Callable[[np.ndarray], np.ndarray], frame_stride: int = 1) -> np.ndarray:
    """Features of every ``frame_stride``-th frame of every video (or image batch): (total, d)."""
    feats = [np.asarray(extractor(as_video(v)[::frame_stride])) for v in videos]
    if not feats:
        raise ValueError("no frames")
    return np.concatenate(feats)


def fid_from_features(real_features: np.ndarray, fake_features: np.ndarray, ddof: int = FID_DDOF) -> float:
    mu_r, s_r = gaussian_stats(real_features, ddof=ddof)
    mu_f, s_f = gaussian_stats(fake_features, ddof=ddof)
    return frechet_distance(mu_f, s_f, mu_r, s_r)


def fid(real_videos: Iterable, fake_videos: Iterable, extractor: Callable | None = None, *,
        frame_stride: int = 1, weights=None, weights_dir=None, device="cpu") -> float:
    """FID between the frames of two sets of uint8 videos (each (n, h, w, 3))."""
    extractor = extractor or InceptionFeatures(weights=weights, weights_dir=weights_dir, device=device)
    return fid_from_features(frame_features(real_videos, extractor, frame_stride),
                             frame_features(fake_videos, extractor, frame_stride))
