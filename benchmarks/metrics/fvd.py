"""FVD with StyleGAN-V's I3D (``i3d_torchscript.pt``, Kinetics-400, a port of the tf.hub I3D).

Clips: every video is cut into consecutive 16-frame clips (stride 16 by default, starting at frame 0;
a tail shorter than 16 frames and videos shorter than 16 frames are left out, as StyleGAN-V's
``discard_short_videos``). Preprocessing (the widely used StyleGAN-V-derived FVD code, e.g.
``common_metrics_on_video_quality``): frames to [0, 1], shorter side resized to 224 (bilinear,
``align_corners=False``), centre crop 224², mapped to [-1, 1], layout (b, 3, 16, 224, 224); the detector
is called with ``rescale=False, resize=False, return_features=True`` (400-d pre-softmax features).
``preprocess="internal"`` instead feeds uint8 values as StyleGAN-V's own ``compute_fvd`` does, with
``rescale=True, resize=True`` (the model rescales and resizes itself).
Statistics: mean and population covariance (ddof=0, StyleGAN-V's ``FeatureStats``); Fréchet distance
from ``benchmarks.metrics.frechet``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable

import numpy as np

from benchmarks.metrics.common import as_video, resolve_device
from benchmarks.metrics.errors import MetricUnavailable
from benchmarks.metrics.frechet import frechet_distance, gaussian_stats
from benchmarks.metrics.weights import I3D

FVD_NUM_FRAMES = 16
FVD_RESOLUTION = 224
FVD_DDOF = 0


def sample_clips(video, num_frames: int = FVD_NUM_FRAMES, stride: int | None = None,
                 max_clips: int | None = None) -> list[np.ndarray]:
    """Consecutive ``num_frames``-frame clips starting at 0, stride, 2·stride, ... (stride defaults to
    num_frames: non-overlapping). Videos shorter than ``num_frames`` give no clip."""
    v = as_video(video, "video")
    stride = num_frames if stride is None else int(stride)
    if stride < 1:
        raise ValueError("stride must be >= 1")
    starts = range(0, v.shape[0] - num_frames + 1, stride)
    clips = [v[s:s + num_frames] for s in starts]
    return clips[:max_clips] if max_clips is not None else clips


def preprocess_clips(clips: np.ndarray, resolution: int = FVD_RESOLUTION, device="cpu"):
    """uint8 (b, t, h, w, 3) -> float (b, 3, t, R, R) in [-1, 1]: shorter side to R, centre crop."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(clips)).to(device)
    b, t, h, w, _ = x.shape
    x = x.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).float() / 255.0
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    hh, ww = x.shape[-2:]
    top, left = (hh - resolution) // 2, (ww - resolution) // 2
    x = x[..., top:top + resolution, left:left + resolution]
    x = (x - 0.5) * 2
    return x.reshape(b, t, 3, resolution, resolution).permute(0, 2, 1, 3, 4).contiguous()


class I3DFeatures:
    """StyleGAN-V's I3D TorchScript detector: uint8 clips (b, 16, h, w, 3) -> (b, 400) features.

    ``model``: inject any callable ``f(x, rescale=..., resize=..., return_features=...)`` for tests.
    """

    def __init__(self, model=None, *, weights: str | os.PathLike | None = None,
                 weights_dir: str | os.PathLike | None = None, device="cpu", batch_size: int = 4,
                 preprocess: str = "external", resolution: int = FVD_RESOLUTION):
        import torch

        if preprocess not in ("external", "internal"):
            raise ValueError("preprocess must be 'external' or 'internal'")
        self.device = resolve_device(device)
        if model is None:
            path = I3D.resolve(weights, weights_dir)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation; the file is TorchScript
                    model = torch.jit.load(str(path), map_location=self.device).eval()
            except Exception as e:
                raise MetricUnavailable("FVD", f"cannot load {path}: {e}; {I3D.how}") from e
        self.model = model
        self.batch_size = max(1, int(batch_size))
        self.preprocess = preprocess
        self.resolution = resolution

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        import torch

        clips = np.asarray(clips)
        if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != np.uint8:
            raise ValueError(f"expected uint8 clips (b, t, h, w, 3), got {clips.shape} {clips.dtype}")
        out = []
        with torch.no_grad():
            for i in range(0, clips.shape[0], self.batch_size):
                chunk = clips[i:i + self.batch_size]
                if self.preprocess == "external":
                    x = preprocess_clips(chunk, self.resolution, self.device)
                    kw = dict(rescale=False, resize=False, return_features=True)
                else:  # StyleGAN-V compute_fvd: uint8 values, the model rescales and resizes
                    x = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device)
                    x = x.permute(0, 4, 1, 2, 3).float()
                    kw = dict(rescale=True, resize=True, return_features=True)
                f = self.model(x, **kw)
                out.append(f.reshape(f.shape[0], -1).double().cpu().numpy())
        return np.concatenate(out)


def video_features(videos: Iterable, extractor: Callable[[np.ndarray], np.ndarray],
                   num_frames: int = FVD_NUM_FRAMES, stride: int | None = None,
                   max_clips_per_video: int | None = None, batch_clips: int = 8) -> np.ndarray:
    """Features of every sampled clip of every video: (total clips, d)."""
    feats, pending = [], []

    def flush():
        if pending:
            feats.append(np.asarray(extractor(np.stack(pending))))
            pending.clear()

    for v in videos:
        for clip in sample_clips(v, num_frames, stride, max_clips_per_video):
            pending.append(clip)
            if len(pending) >= batch_clips:
                flush()
    flush()
    if not feats:
        raise ValueError(f"no {num_frames}-frame clip in any video (all videos shorter than {num_frames} frames)")
    return np.concatenate(feats)


def fvd_from_features(real_features: np.ndarray, fake_features: np.ndarray, ddof: int = FVD_DDOF) -> float:
    mu_r, s_r = gaussian_stats(real_features, ddof=ddof)
    mu_f, s_f = gaussian_stats(fake_features, ddof=ddof)
    return frechet_distance(mu_f, s_f, mu_r, s_r)


def fvd(real_videos: Iterable, fake_videos: Iterable, extractor: Callable | None = None, *,
        num_frames: int = FVD_NUM_FRAMES, stride: int | None = None, max_clips_per_video: int | None = None,
        weights=None, weights_dir=None, device="cpu") -> float:
    """FVD between two sets of uint8 videos (each (n, h, w, 3)); see the module docstring."""
    extractor = extractor or I3DFeatures(weights=weights, weights_dir=weights_dir, device=device)
    real = video_features(real_videos, extractor, num_frames, stride, max_clips_per_video)
    fake = video_features(fake_videos, extractor, num_frames, stride, max_clips_per_video)
    return fvd_from_features(real, fake)
