"""Where each metric's pretrained network lives, and the one-line message when it does not.

Lookup order for every file: the explicit path given by the caller, then ``weights_dir`` (the file
directly in it, or in one of its known sub-folders), then the owning package's standard cache, then
``$PERSONALIVE_METRICS_DIR`` (default ``~/.cache/personalive/metrics``). The lookup itself is the core's
(``personalive_cli.pretrained_files``), shared with the training losses.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from benchmarks.metrics.errors import MetricUnavailable
from personalive_cli.pretrained_files import WeightFile as CoreWeightFile
from personalive_cli.pretrained_files import WeightsFileError


def personalive_metrics_dir() -> Path:
    return Path(os.environ.get("PERSONALIVE_METRICS_DIR", os.path.expanduser("~/.cache/personalive/metrics")))


def insightface_root() -> Path:
    return Path(os.environ.get("INSIGHTFACE_HOME", os.path.expanduser("~/.insightface")))


@dataclass(frozen=True)
class WeightFile(CoreWeightFile):
    """One pretrained file a metric needs (``label`` = the metric). The core lookup plus insightface's
    cache and ``$PERSONALIVE_METRICS_DIR``; a missing file raises MetricUnavailable."""

    @property
    def metric(self) -> str:
        return self.label

    def standard_locations(self) -> list[Path]:
        locs = super().standard_locations()
        if self.cache == "insightface":
            locs.append(insightface_root() / "models" / "buffalo_l" / self.filename)
        locs.append(personalive_metrics_dir() / self.filename)
        return locs

    def resolve(self, path: str | os.PathLike | None = None,
                weights_dir: str | os.PathLike | None = None) -> Path:
        """The first existing candidate; raises MetricUnavailable (its ``searched`` lists the paths)."""
        try:
            return super().resolve(path, weights_dir)
        except WeightsFileError as e:
            raise MetricUnavailable(self.metric, e.reason, e.searched) from None

    def find(self, path=None, weights_dir=None) -> Path | None:
        try:
            return self.resolve(path, weights_dir)
        except MetricUnavailable:
            return None


ALEXNET = WeightFile(
    label="LPIPS",
    filename="alexnet-owt-7be5be79.pth",
    url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    how=("download https://download.pytorch.org/models/alexnet-owt-7be5be79.pth into "
         "~/.cache/torch/hub/checkpoints/ (what `lpips.LPIPS(net='alex')` does online) or into --weights-dir"),
    subdirs=("lpips", "metrics"),
    cache="torch_hub",
)

ARCFACE = WeightFile(
    label="ID-SIM",
    filename="w600k_r50.onnx",
    url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
    how=("download https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip and "
         "unzip it into ~/.insightface/models/buffalo_l/ (what insightface's FaceAnalysis does online) "
         "or put w600k_r50.onnx into --weights-dir"),
    subdirs=("buffalo_l", "models/buffalo_l", "insightface/models/buffalo_l", "metrics"),
    cache="insightface",
)

I3D = WeightFile(
    label="FVD",
    filename="i3d_torchscript.pt",
    url="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
    how=("download https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1 (StyleGAN-V's I3D) "
         "as i3d_torchscript.pt into ~/.cache/personalive/metrics/ or --weights-dir"),
    subdirs=("fvd", "metrics"),
    cache="torch_hub",
    cache_globs=("~/.cache/dnnlib/downloads/*i3d_torchscript.pt",),
)

FID_INCEPTION = WeightFile(
    label="FID",
    filename="pt_inception-2015-12-05-6726825d.pth",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    how=("download https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
         "pt_inception-2015-12-05-6726825d.pth into ~/.cache/torch/hub/checkpoints/ "
         "(what pytorch-fid does online) or into --weights-dir"),
    subdirs=("fid", "metrics"),
    cache="torch_hub",
)


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require_module(metric: str, module: str, pip_name: str):
    """Import ``module`` or raise MetricUnavailable naming the pip requirement."""
    if not has_module(module):
        raise MetricUnavailable(metric, f"Python package '{module}' not installed; pip install {pip_name}")
    return importlib.import_module(module)


def face_recognition_models_dir() -> Path | None:
    """The model folder of the ``face_recognition_models`` wheel, found without importing it.

    (Its ``__init__`` imports ``pkg_resources``, which recent setuptools no longer ship.)
    """
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "models"
        if d.is_dir():
            return d
    return None
