"""LPIPS (AlexNet, the ``lpips`` package) and TecoGAN's tLP.

LPIPS(a, b): ``lpips.LPIPS(net='alex', version='0.1')`` on frames mapped to [-1, 1]; its linear heads
(``lpips/weights/v0.1/alex.pth``) ship inside the pip package, the AlexNet trunk is torchvision's
ImageNet ``alexnet-owt-7be5be79.pth`` (see ``weights.ALEXNET``).

tLP(gen, target) = 100 · mean_t |LPIPS(target[t-1], target[t]) − LPIPS(gen[t-1], gen[t])|, t = 1..n-1
(TecoGAN, Chu et al. 2020). Self-reenactment: target = ground truth. Cross-reenactment (no ground
truth): target = the driving video by default; ``target=None`` gives the reference-free variant
100 · mean_t LPIPS(gen[t-1], gen[t]).
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks.metrics.common import as_video, resolve_device
from benchmarks.metrics.errors import MetricUnavailable
from benchmarks.metrics.weights import ALEXNET, require_module
from personalive_cli.pretrained_files import WeightsFileError

#: LPIPS resolution: None = the frames' native resolution (512² for PersonaLive outputs).
DEFAULT_LPIPS_SIZE: int | None = None
TLP_SCALE = 100.0
#: Cross-reenactment tLP (no ground truth): "driving" = against the driving video (our default; the paper
#: does not say), "none" = reference-free 100 · mean LPIPS(gen[t-1], gen[t]).
TLP_CROSS_TARGET = "driving"


def load_alexnet_trunk(model, state_dict: dict) -> None:
    """Copy torchvision AlexNet ``features.*`` weights into an ``lpips`` AlexNet trunk (slice1..slice5).

    Strict: every trunk parameter must be filled, with matching shapes (ValueError otherwise).
    """
    from personalive_cli.lpips_net import load_lpips_trunk  # torch: imported on use

    load_lpips_trunk(model, state_dict)


def build_lpips_alex(weights: str | os.PathLike | None = None, weights_dir: str | os.PathLike | None = None,
                     random_trunk: bool = False, random_heads: bool = False):
    """``lpips.LPIPS(net='alex', version='0.1')`` with the AlexNet trunk loaded from a local file.

    ``random_trunk=True`` (and optionally ``random_heads=True``) builds random weights without any file:
    for tests only (``lpips.LPIPS(pretrained=not random_heads, pnet_rand=True, net='alex')``).
    """
    require_module("LPIPS", "lpips", "lpips>=0.1.4")
    from personalive_cli.lpips_net import build_lpips  # torch: imported on use

    path = None if random_trunk else ALEXNET.resolve(weights, weights_dir)
    try:
        return build_lpips("alex", path, random_heads=random_heads, weight_file=ALEXNET)
    except WeightsFileError as e:  # corrupt / wrong file
        raise MetricUnavailable("LPIPS", e.reason, e.searched) from e


class LPIPSMetric:
    """Frame-wise LPIPS with a loaded network; reused across videos.

    Args:
        model: an ``lpips.LPIPS``-like module ``f(x0, x1) -> (b, 1, 1, 1)`` on [-1, 1] inputs (inject a
            random-weight one in tests). Built from ``weights``/``weights_dir`` when None.
        size: resize frames to ``size × size`` (bilinear, antialiased) before LPIPS; None = native.
        device: "auto", "cpu", "cuda", ...
        batch_size: frame pairs per forward pass.
    """

    def __init__(self, model=None, *, weights=None, weights_dir=None, size: int | None = DEFAULT_LPIPS_SIZE,
                 device="cpu", batch_size: int = 8):
        self.device = resolve_device(device)
        self.model = (model if model is not None else build_lpips_alex(weights, weights_dir)).to(self.device)
        self.model.eval()
        self.size = size
        self.batch_size = max(1, int(batch_size))

    def _prep(self, frames: np.ndarray):
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
            x = x.clamp(-1.0, 1.0)
        return x

    def distances(self, a, b) -> np.ndarray:
        """LPIPS between a[i] and b[i] for every i: (n,) float64."""
        import torch

        a = as_video(a, "a")
        b = as_video(b, "b")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"frame counts differ: {a.shape[0]} vs {b.shape[0]}")
        if self.size is None and a.shape[1:3] != b.shape[1:3]:
            raise ValueError(f"frame sizes differ ({a.shape[1:3]} vs {b.shape[1:3]}); set size= to resize both")
        out = []
        with torch.no_grad():
            for i in range(0, a.shape[0], self.batch_size):
                d = self.model(self._prep(a[i:i + self.batch_size]), self._prep(b[i:i + self.batch_size]))
                out.append(d.reshape(-1).double().cpu().numpy())
        return np.concatenate(out)

    def consecutive(self, video) -> np.ndarray:
        """LPIPS(video[t-1], video[t]) for t = 1..n-1: (n-1,)."""
        v = as_video(video, "video")
        if v.shape[0] < 2:
            raise ValueError("need at least 2 frames for consecutive-frame LPIPS")
        return self.distances(v[:-1], v[1:])

    def __call__(self, generated, ground_truth) -> float:
        """Mean frame-wise LPIPS between a generated video and its ground truth."""
        return float(self.distances(generated, ground_truth).mean())

    def tlp(self, generated, target=None) -> float:
        """tLP × 100 against ``target`` (ground truth or driving video); ``target=None``: reference-free."""
        g = self.consecutive(generated)
        if target is None:
            return float(TLP_SCALE * g.mean())
        t = self.consecutive(target)
        if t.shape != g.shape:
            raise ValueError(f"frame counts differ: generated {g.shape[0] + 1} vs target {t.shape[0] + 1}")
        return float(TLP_SCALE * np.abs(t - g).mean())


    def tlp_cross(self, generated, driving, against: str = TLP_CROSS_TARGET) -> float:
        """Cross-reenactment tLP: against the driving video ("driving") or reference-free ("none")."""
        if against == "driving":
            return self.tlp(generated, driving)
        if against == "none":
            return self.tlp(generated, None)
        raise ValueError("against must be 'driving' or 'none'")


def lpips_score(generated, ground_truth, metric: LPIPSMetric | None = None, **kwargs) -> float:
    """Mean LPIPS over frames; builds an ``LPIPSMetric(**kwargs)`` when none is given."""
    return (metric or LPIPSMetric(**kwargs))(generated, ground_truth)


def tlp_score(generated, target=None, metric: LPIPSMetric | None = None, **kwargs) -> float:
    """TecoGAN tLP × 100 (see module docstring for ``target``)."""
    return (metric or LPIPSMetric(**kwargs)).tlp(generated, target)
