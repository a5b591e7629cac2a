"""Quality metrics of the benchmark: LPIPS, tLP, ID-SIM, FVD, FID (see benchmarks/METRICS.md).

Frames at the edges are uint8 RGB numpy arrays (n, h, w, 3). Each metric loads a pretrained network
from an explicit path, a ``weights_dir``, or its package's standard cache, and raises
``MetricUnavailable`` (one line: the missing file and where to get it) when the network is absent.
"""

from benchmarks.metrics.errors import MetricUnavailable
from benchmarks.metrics.fid import InceptionFeatures, build_fid_inception, fid, fid_from_features
from benchmarks.metrics.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats
from benchmarks.metrics.fvd import (
    I3DFeatures,
    fvd,
    fvd_from_features,
    preprocess_clips,
    sample_clips,
    video_features,
)
from benchmarks.metrics.identity import (
    ArcFaceIdentity,
    ArcFaceONNX,
    DlibIdentity,
    FaceAligner,
    IdentityMetric,
    id_sim,
)
from benchmarks.metrics.lpips_metrics import LPIPSMetric, build_lpips_alex, lpips_score, tlp_score
from benchmarks.metrics.registry import (
    METRICS,
    MetricSpec,
    MetricStatus,
    available_metrics,
    make_metric,
    metric_status,
    require_metric,
)

__all__ = [
    "METRICS", "ArcFaceIdentity", "ArcFaceONNX", "DlibIdentity", "FaceAligner",
    "I3DFeatures", "IdentityMetric", "InceptionFeatures", "LPIPSMetric", "MetricSpec", "MetricStatus",
    "MetricUnavailable", "available_metrics", "build_fid_inception", "build_lpips_alex", "fid",
    "fid_from_features", "frechet_distance", "make_metric", "frechet_distance_from_features", "fvd", "fvd_from_features",
    "gaussian_stats", "id_sim", "lpips_score", "metric_status", "preprocess_clips", "require_metric",
    "sample_clips", "tlp_score", "video_features",
]
