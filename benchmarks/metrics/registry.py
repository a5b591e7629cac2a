"""Which metric columns exist, which can run here, and why not.

``available_metrics(weights_dir)`` only looks for packages and files (nothing is loaded), so the bench can
leave a column out with its reason, or fail with it under ``--strict`` via ``require_metric``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from benchmarks.metrics.errors import MetricUnavailable
from benchmarks.metrics.weights import (
    ALEXNET,
    ARCFACE,
    FID_INCEPTION,
    I3D,
    WeightFile,
    face_recognition_models_dir,
    has_module,
)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool
    description: str
    packages: tuple[tuple[str, str], ...] = ()  # (import name, pip requirement)
    files: tuple[WeightFile, ...] = ()
    in_paper: bool = True


@dataclass
class MetricStatus:
    name: str
    available: bool
    reason: str | None = None  # one line when not available
    files: dict[str, str] = field(default_factory=dict)  # filename -> resolved path


METRICS: dict[str, MetricSpec] = {
    "LPIPS": MetricSpec("LPIPS", False, "frame-wise LPIPS (AlexNet, v0.1) vs ground truth",
                        (("lpips", "lpips>=0.1.4"),), (ALEXNET,)),
    "tLP": MetricSpec("tLP", False, "TecoGAN tLP x100 vs ground truth (self) or driving video (cross)",
                      (("lpips", "lpips>=0.1.4"),), (ALEXNET,)),
    "ID-SIM": MetricSpec("ID-SIM", True, "ArcFace (insightface w600k_r50) cosine, reference vs frames",
                         (("insightface", "'personalive[bench]'"), ("onnxruntime", "onnxruntime")),
                         (ARCFACE,)),
    "FVD": MetricSpec("FVD", False, "Frechet video distance, StyleGAN-V I3D, 16-frame clips",
                      (("scipy", "scipy>=1.10"),), (I3D,)),
    "FID": MetricSpec("FID", False, "Frechet inception distance, pytorch-fid InceptionV3 pool3",
                      (("pytorch_fid", "pytorch-fid>=0.3"), ("scipy", "scipy>=1.10")), (FID_INCEPTION,)),
    "ID-SIM (dlib)": MetricSpec("ID-SIM (dlib)", True,
                                "dlib ResNet face descriptor cosine (offline; not comparable with ID-SIM)",
                                (("dlib", "dlib-bin"),), (), in_paper=False),
}


def metric_status(name: str, weights_dir: str | os.PathLike | None = None,
                  paths: dict[str, str | os.PathLike] | None = None) -> MetricStatus:
    """Status of one metric. ``paths`` maps a file name (e.g. "w600k_r50.onnx") to an explicit path."""
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    spec = METRICS[name]
    paths = paths or {}
    for module, pip_name in spec.packages:
        if not has_module(module):
            return MetricStatus(name, False, f"{name}: Python package '{module}' not installed; pip install {pip_name}")
    if name == "ID-SIM (dlib)":
        d = face_recognition_models_dir()
        needed = ("shape_predictor_68_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat")
        if d is None or not all((d / f).is_file() for f in needed):
            return MetricStatus(name, False, f"{name}: {needed[1]} not found; pip install face_recognition_models")
        return MetricStatus(name, True, None, {f: str(d / f) for f in needed})
    found: dict[str, str] = {}
    for wf in spec.files:
        try:
            found[wf.filename] = str(wf.resolve(paths.get(wf.filename), weights_dir))
        except MetricUnavailable as e:
            return MetricStatus(name, False, f"{name}: {e.reason}")
    return MetricStatus(name, True, None, found)


def available_metrics(weights_dir: str | os.PathLike | None = None,
                      paths: dict[str, str | os.PathLike] | None = None) -> dict[str, MetricStatus]:
    """Every metric column -> its status (available, or the one-line reason it is not)."""
    return {name: metric_status(name, weights_dir, paths) for name in METRICS}


def require_metric(name: str, weights_dir=None, paths=None) -> MetricStatus:
    """Like ``metric_status`` but raises ``MetricUnavailable`` (for ``--strict``)."""
    st = metric_status(name, weights_dir, paths)
    if not st.available:
        raise MetricUnavailable(name, (st.reason or "").split(": ", 1)[-1])
    return st


def make_metric(name: str, weights_dir: str | os.PathLike | None = None, device="cpu", **kwargs):
    """Build the loaded metric object behind a column (raises MetricUnavailable when it cannot):

    LPIPS/tLP -> ``LPIPSMetric`` (``m(gen, gt)``, ``m.tlp(gen, gt)``, ``m.tlp_cross(gen, drv)``);
    ID-SIM -> ``ArcFaceIdentity``; ID-SIM (dlib) -> ``DlibIdentity`` (``m(reference, frames)``);
    FVD -> ``I3DFeatures`` (pass to ``fvd(real, fake, extractor=m)``);
    FID -> ``InceptionFeatures`` (pass to ``fid(real, fake, extractor=m)``).
    """
    if name in ("LPIPS", "tLP"):
        from benchmarks.metrics.lpips_metrics import LPIPSMetric

        return LPIPSMetric(weights_dir=weights_dir, device=device, **kwargs)
    if name == "ID-SIM":
        from benchmarks.metrics.identity import ArcFaceIdentity

        return ArcFaceIdentity(weights_dir=weights_dir, **kwargs)
    if name == "ID-SIM (dlib)":
        from benchmarks.metrics.identity import DlibIdentity

        return DlibIdentity(**kwargs)
    if name == "FVD":
        from benchmarks.metrics.fvd import I3DFeatures

        return I3DFeatures(weights_dir=weights_dir, device=device, **kwargs)
    if name == "FID":
        from benchmarks.metrics.fid import InceptionFeatures

        return InceptionFeatures(weights_dir=weights_dir, device=device, **kwargs)
    raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
