"""Quality columns: per-video scores (cached) and their aggregation into one row per method.

Columns (see benchmarks/README.md for every detail):

- ``LPIPS`` and ``tLP (self)``: self-reenactment videos, generated vs ground truth.
- ``ID-SIM``, ``FVD``, ``tLP (cross)``: the paper groups these under cross-reenactment. ``tLP (cross)``
  is over cross entries only; ``ID-SIM``, ``FVD`` (and the extras ``FID``, ``ID-SIM (dlib)``) are over
  the *identity set*: the cross entries when the dataset has any, else the self entries (the ``set``
  column says which). FVD/FID compare the generated videos with the driving videos of the same set
  (in self-reenactment those are the ground truth).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from benchmarks.metrics import MetricUnavailable, available_metrics, make_metric, require_metric

#: Quality columns in table order: (column, metric network, protocol scope).
QUALITY_COLUMNS = ("LPIPS", "tLP (self)", "ID-SIM", "FVD", "tLP (cross)", "FID", "ID-SIM (dlib)")
COLUMN_METRIC = {"LPIPS": "LPIPS", "tLP (self)": "tLP", "ID-SIM": "ID-SIM", "FVD": "FVD",
                 "tLP (cross)": "tLP", "FID": "FID", "ID-SIM (dlib)": "ID-SIM (dlib)"}
HIGHER_IS_BETTER = {"LPIPS": False, "tLP (self)": False, "ID-SIM": True, "FVD": False, "tLP (cross)": False,
                    "FID": False, "ID-SIM (dlib)": True}
PER_VIDEO = ("LPIPS", "tLP (self)", "tLP (cross)", "ID-SIM", "ID-SIM (dlib)")
SET_LEVEL = ("FVD", "FID")


@dataclass
class MetricSet:
    """The loaded metric networks for one bench run, and why the others are absent."""

    objects: dict[str, object] = field(default_factory=dict)   # metric name -> loaded object
    missing: dict[str, str] = field(default_factory=dict)      # metric name -> one-line reason

    def has(self, column: str) -> bool:
        return COLUMN_METRIC[column] in self.objects

    def get(self, column: str):
        return self.objects[COLUMN_METRIC[column]]

    def reason(self, column: str) -> str | None:
        return self.missing.get(COLUMN_METRIC[column])


def load_metrics(columns=QUALITY_COLUMNS, weights_dir=None, device="cpu", strict: bool = False,
                 overrides: dict[str, object] | None = None,
                 factory: Callable = make_metric) -> MetricSet:
    """Load the networks behind ``columns``. Absent ones are recorded with their reason (``strict``:
    raise ``MetricUnavailable`` instead). ``overrides``: metric name -> ready object (tests, custom nets)."""
    overrides = dict(overrides or {})
    names = list(dict.fromkeys(COLUMN_METRIC[c] for c in columns))
    status = available_metrics(weights_dir)
    ms = MetricSet()
    for name in names:
        if name in overrides:
            ms.objects[name] = overrides[name]
            continue
        if name == "tLP" and "LPIPS" in ms.objects:
            ms.objects[name] = ms.objects["LPIPS"]
            continue
        if strict:
            require_metric(name, weights_dir)
        if not status[name].available:
            ms.missing[name] = status[name].reason or f"{name}: unavailable"
            continue
        try:
            ms.objects[name] = factory(name, weights_dir, device)
        except MetricUnavailable as exc:
            if strict:
                raise
            ms.missing[name] = str(exc)
    return ms


def identity_protocol(protocols) -> str:
    """The protocol whose videos form the identity set (ID-SIM, FVD, FID): cross if any, else self."""
    return "cross" if "cross" in set(protocols) else "self"


def score_video(metrics: MetricSet, protocol: str, reference: np.ndarray, driving: np.ndarray,
                generated: np.ndarray, id_set: str, tlp_cross: str = "driving") -> tuple[dict, dict[str, np.ndarray]]:
    """Per-video scores and the generated video's FVD/FID features (aggregated over the set later).
    ``tlp_cross``: the cross-reenactment tLP target, "driving" or "none" (``--tlp-cross``; METRICS.md)."""
    scores: dict = {}
    feats: dict[str, np.ndarray] = {}
    if protocol == "self":
        if metrics.has("LPIPS"):
            scores["LPIPS"] = metrics.get("LPIPS")(generated, driving)
        if metrics.has("tLP (self)") and len(generated) >= 2:
            scores["tLP (self)"] = metrics.get("tLP (self)").tlp(generated, driving)
    else:
        if metrics.has("tLP (cross)") and len(generated) >= 2:
            scores["tLP (cross)"] = metrics.get("tLP (cross)").tlp_cross(generated, driving, against=tlp_cross)
    if protocol == id_set:
        for col in ("ID-SIM", "ID-SIM (dlib)"):
            if metrics.has(col):
                scores[col] = metrics.get(col)(reference, generated)
        feats.update(set_features(metrics, generated))
    return scores, feats


def set_features(metrics: MetricSet, video: np.ndarray) -> dict[str, np.ndarray]:
    """FVD clip features (I3D, 16-frame clips) and FID frame features of one video."""
    from benchmarks.metrics.fvd import FVD_NUM_FRAMES, video_features

    out = {}
    if metrics.has("FVD") and len(video) >= FVD_NUM_FRAMES:
        out["FVD"] = video_features([video], metrics.get("FVD"))
    if metrics.has("FID"):
        out["FID"] = np.asarray(metrics.get("FID")(video))
    return out


def aggregate(records: list[dict], fake_feats: dict[str, list[np.ndarray]],
              real_feats: dict[str, list[np.ndarray]], metrics: MetricSet, id_set: str,
              protocols: set[str]) -> tuple[dict, dict[str, str]]:
    """Mean per-video scores per column, FVD/FID over the pooled features. Returns (values, notes):
    a column without a value gets a note saying why (network absent, no video of that protocol)."""
    from benchmarks.metrics.fid import fid_from_features
    from benchmarks.metrics.fvd import fvd_from_features

    values: dict = {}
    notes: dict[str, str] = {}
    scope = {"LPIPS": "self", "tLP (self)": "self", "tLP (cross)": "cross"}
    for col in QUALITY_COLUMNS:
        if not metrics.has(col):
            notes[col] = metrics.reason(col) or f"{col}: not requested"
            continue
        need = scope.get(col, id_set)
        if need not in protocols:
            notes[col] = f"{col}: no {need}-reenactment videos in the dataset"
            continue
        if col in SET_LEVEL:
            fake = [f for f in fake_feats.get(col, []) if f is not None and len(f)]
            real = [f for f in real_feats.get(col, []) if f is not None and len(f)]
            if not fake or not real:
                notes[col] = f"{col}: no 16-frame clip (videos too short)" if col == "FVD" else f"{col}: no frames"
                continue
            fake_a, real_a = np.concatenate(fake), np.concatenate(real)
            fn = fvd_from_features if col == "FVD" else fid_from_features
            values[col] = float(fn(real_a, fake_a))
            values[f"{col} samples"] = int(len(fake_a))
            continue
        vals = [r[col] for r in records if r.get(col) is not None and not _isnan(r[col])]
        if not vals:
            notes[col] = f"{col}: no score (videos too short or no face)"
            continue
        values[col] = float(np.mean(vals))
    return values, notes


def _isnan(x) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return False
