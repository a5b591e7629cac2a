"""The five LivePortrait networks together: configuration, random init, exact loading and saving.

Official layout (the Hugging Face repo ``KwaiVGI/LivePortrait``, i.e. the official ``pretrained_weights/``)::

    liveportrait/base_models/appearance_feature_extractor.pth   F  (flat state dict)
    liveportrait/base_models/motion_extractor.pth               M  (flat, ``detector.*``)
    liveportrait/base_models/warping_module.pth                 W  (flat)
    liveportrait/base_models/spade_generator.pth                G  (flat, spectral norm as weight_orig/_u/_v)
    liveportrait/retargeting_models/stitching_retargeting_module.pth
        {"retarget_shoulder": {...}, "retarget_mouth": {...}, "retarget_eye": {...}}
        (inner keys ``mlp.<i>.weight|bias``, possibly with a ``module.`` prefix, which is removed)
    liveportrait/landmark.onnx                                  203-point landmarks (optional: cropping)
    insightface/models/buffalo_l/{det_10g,2d106det}.onnx        face detector + 106 landmarks (optional)
    liveportrait/config.json                                    our addition: a non-default (tiny) build

Loading is exact, as for PersonaLive: every stored key must land in a tensor of the same shape and every
tensor must be covered (BatchNorm's ``num_batches_tracked`` may be absent; PersonaLive's extra
``idx_tensor`` in the motion extractor is accepted). Only the three named entries of the stitching file
are read (the official loader ignores anything else there).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from baselines.liveportrait.appearance_feature_extractor import (
    AppearanceFeatureExtractor,
    AppearanceFeatureExtractorConfig,
)
from baselines.liveportrait.motion_extractor import MotionExtractor, MotionExtractorConfig
from baselines.liveportrait.spade_generator import SPADEGenerator, SPADEGeneratorConfig
from baselines.liveportrait.stitching_retargeting import (
    FILE_ENTRIES,
    StitchingRetargeting,
    StitchingRetargetingConfig,
)
from baselines.liveportrait.warping_network import DenseMotionConfig, WarpingNetwork, WarpingNetworkConfig
from personalive_cli.errors import UserError

HUB_REPO = "KwaiVGI/LivePortrait"
HUB_PATTERNS = ["liveportrait/base_models/*.pth", "liveportrait/retargeting_models/*.pth",
                "liveportrait/landmark.onnx", "insightface/models/buffalo_l/det_10g.onnx",
                "insightface/models/buffalo_l/2d106det.onnx"]
BASE_FILES = {
    "appearance_feature_extractor": "base_models/appearance_feature_extractor.pth",
    "motion_extractor": "base_models/motion_extractor.pth",
    "warping_module": "base_models/warping_module.pth",
    "spade_generator": "base_models/spade_generator.pth",
}
STITCHING_FILE = "retargeting_models/stitching_retargeting_module.pth"
CONFIG_FILE = "config.json"
ENV_VAR = "LIVEPORTRAIT_WEIGHTS"
DOWNLOAD_HINT = ("run `personalive weights download --method liveportrait` (hub cache, found automatically), "
                 f"or with DIR and pass --weights DIR (or set {ENV_VAR})")
# Published parameter counts (assets/docs/speed.md), millions.
PUBLISHED_PARAMS_M = {"appearance_feature_extractor": 0.84, "motion_extractor": 28.12, "warping_module": 45.53,
                      "spade_generator": 55.37, "stitching_retargeting_module": 0.23}


@dataclass(frozen=True)
class LivePortraitConfig:
    appearance: AppearanceFeatureExtractorConfig = field(default_factory=AppearanceFeatureExtractorConfig)
    motion: MotionExtractorConfig = field(default_factory=MotionExtractorConfig)
    warping: WarpingNetworkConfig = field(default_factory=WarpingNetworkConfig)
    generator: SPADEGeneratorConfig = field(default_factory=SPADEGeneratorConfig)
    stitching: StitchingRetargetingConfig = field(default_factory=StitchingRetargetingConfig)

    @classmethod
    def tiny(cls) -> LivePortraitConfig:
        """Few channels, blocks and keypoints (8: the 7-cubed mask convolution over 2 x (K + 1) channels
        dominates the cost); same code paths and input/output sizes (256 in, 512 out)."""
        k = 8
        return cls(AppearanceFeatureExtractorConfig.tiny(), dataclasses.replace(MotionExtractorConfig.tiny(), num_kp=k),
                   dataclasses.replace(WarpingNetworkConfig.tiny(), num_kp=k), SPADEGeneratorConfig.tiny(),
                   dataclasses.replace(StitchingRetargetingConfig.tiny(), num_kp=k))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> LivePortraitConfig:
        def build(klass, values):
            if values is None:
                return klass()
            kwargs = {}
            for f in dataclasses.fields(klass):
                if f.name not in values:
                    continue
                v = values[f.name]
                if f.name == "dense_motion":
                    v = build(DenseMotionConfig, v)
                elif isinstance(v, list):
                    v = tuple(v)
                kwargs[f.name] = v
            unknown = set(values) - {f.name for f in dataclasses.fields(klass)}
            if unknown:
                raise ValueError(f"unknown {klass.__name__} fields: {', '.join(sorted(unknown))}")
            return klass(**kwargs)

        return cls(appearance=build(AppearanceFeatureExtractorConfig, data.get("appearance")),
                   motion=build(MotionExtractorConfig, data.get("motion")),
                   warping=build(WarpingNetworkConfig, data.get("warping")),
                   generator=build(SPADEGeneratorConfig, data.get("generator")),
                   stitching=build(StitchingRetargetingConfig, data.get("stitching")))


@dataclass(frozen=True)
class LivePortraitLayout:
    """Where the files of a LivePortrait weights folder live."""

    root: Path        # the folder holding liveportrait/ (and insightface/)
    liveportrait: Path

    @classmethod
    def from_root(cls, root: str | Path) -> LivePortraitLayout:
        root = Path(root).expanduser()
        if (root / "base_models").is_dir() and not (root / "liveportrait").is_dir():
            return cls(root=root.parent, liveportrait=root)  # given the liveportrait/ folder itself
        if (root / "pretrained_weights" / "liveportrait").is_dir() and not (root / "liveportrait").is_dir():
            root = root / "pretrained_weights"  # the official repo's checkout
        return cls(root=root, liveportrait=root / "liveportrait")

    def base(self, name: str) -> Path:
        return self.liveportrait / BASE_FILES[name]

    @property
    def stitching(self) -> Path:
        return self.liveportrait / STITCHING_FILE

    @property
    def config(self) -> Path:
        return self.liveportrait / CONFIG_FILE

    @property
    def landmark_onnx(self) -> Path:
        return self.liveportrait / "landmark.onnx"

    @property
    def detector_onnx(self) -> Path:
        return self.root / "insightface" / "models" / "buffalo_l" / "det_10g.onnx"

    @property
    def landmark106_onnx(self) -> Path:
        return self.root / "insightface" / "models" / "buffalo_l" / "2d106det.onnx"

    def crop_models(self) -> list[Path]:
        return [self.detector_onnx, self.landmark106_onnx, self.landmark_onnx]

    def has_crop_models(self) -> bool:
        return all(p.is_file() for p in self.crop_models())

    def missing(self) -> list[Path]:
        return [p for p in [*(self.base(n) for n in BASE_FILES), self.stitching] if not p.is_file()]

    def read_config(self) -> LivePortraitConfig:
        if not self.config.is_file():
            return LivePortraitConfig()
        try:
            return LivePortraitConfig.from_dict(json.loads(self.config.read_text()))
        except (ValueError, TypeError) as exc:
            raise UserError(f"{self.config}: {exc}") from None


def _hub_root() -> Path | None:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return None
    try:
        root = Path(snapshot_download(HUB_REPO, local_files_only=True, allow_patterns=HUB_PATTERNS))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return root if not LivePortraitLayout.from_root(root).missing() else None


def resolve_weights(weights: str | Path | None) -> LivePortraitLayout:
    """``--weights``, then ``$LIVEPORTRAIT_WEIGHTS``, then ``$PERSONALIVE_WEIGHTS`` (if it also holds
    ``liveportrait/``), then the hub cache; a one-line error when none has the five checkpoints."""
    source = weights or os.environ.get(ENV_VAR)
    if source:
        root = Path(source).expanduser()
        if not root.is_dir():
            raise UserError(f"weights folder not found: {root}; {DOWNLOAD_HINT}")
        layout = LivePortraitLayout.from_root(root)
        missing = layout.missing()
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"not a LivePortrait weights folder: missing {missing[0]}{more}; {DOWNLOAD_HINT}")
        return layout
    shared = os.environ.get("PERSONALIVE_WEIGHTS")
    if shared and not LivePortraitLayout.from_root(shared).missing():
        return LivePortraitLayout.from_root(shared)
    hub = _hub_root()
    if hub is None:
        raise UserError(f"LivePortrait weights not found (no --weights, {ENV_VAR} or hub cache); {DOWNLOAD_HINT}")
    return LivePortraitLayout.from_root(hub)


def read_stitching_file(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The stitching/retargeting file as {entry: {key without 'module.': tensor}} for the three entries read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse means a damaged or foreign file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read checkpoint {path} ({reason}); the file may be truncated: "
                        "download it again with `personalive weights download --method liveportrait`") from None
    if not isinstance(state, Mapping):
        raise UserError(f"{path} is not a dict of the three retargeting state dicts")
    out = {}
    for entry in FILE_ENTRIES.values():
        sub = state.get(entry)
        if not isinstance(sub, Mapping) or not all(isinstance(v, torch.Tensor) for v in sub.values()):
            raise UserError(f"{path}: entry {entry!r} is missing or is not a state dict of tensors")
        out[entry] = {k.replace("module.", ""): v for k, v in sub.items()}
    return out


def _base_load_rules(module: nn.Module) -> tuple[set[str], set[str]]:
    optional = {k for k in module.state_dict() if k.endswith("num_batches_tracked")}
    ignorable = {"idx_tensor"} if isinstance(module, MotionExtractor) else set()
    return optional, ignorable


def _materialize(module: nn.Module) -> None:
    """BatchNorm counters left on the meta device (absent from a file) become 0."""
    for sub in module.modules():
        for name, buf in list(sub._buffers.items()):
            if buf is not None and buf.is_meta:
                sub._buffers[name] = torch.zeros(buf.shape, dtype=buf.dtype)


class LivePortraitModels(nn.Module):
    """appearance_feature_extractor (F), motion_extractor (M), warping_module (W), spade_generator (G),
    stitching_retargeting_module (S + R_lip + R_eye)."""

    def __init__(self, config: LivePortraitConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or LivePortraitConfig()
        self.appearance_feature_extractor = AppearanceFeatureExtractor(config.appearance)
        self.motion_extractor = MotionExtractor(config.motion)
        self.warping_module = WarpingNetwork(config.warping)
        self.spade_generator = SPADEGenerator(config.generator)
        self.stitching_retargeting_module = StitchingRetargeting(config.stitching)
        self.eval()

    @classmethod
    def random(cls, config: LivePortraitConfig | None = None, seed: int = 0) -> LivePortraitModels:
        """Seeded random weights (tests, speed measurements); spectral-norm vectors made consistent."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models = cls(config)
            models.spade_generator.reset_singular_vectors()
        return models

    @classmethod
    def from_pretrained(cls, weights: str | Path | LivePortraitLayout | None) -> LivePortraitModels:
        layout = weights if isinstance(weights, LivePortraitLayout) else resolve_weights(weights)
        from personalive_cli.weights import load_exact

        with torch.device("meta"):
            models = cls(layout.read_config())
        for name in BASE_FILES:
            module = getattr(models, name)
            optional, ignorable = _base_load_rules(module)
            load_exact(module, [layout.base(name)], optional=optional, ignorable=ignorable)
            _materialize(module)
        models._load_stitching(layout.stitching)
        return models.eval()

    def _load_stitching(self, path: Path) -> None:
        from personalive_cli.weights import compare_keys

        stored = read_stitching_file(path)
        for attr, entry in FILE_ENTRIES.items():
            mlp = getattr(self.stitching_retargeting_module, attr)
            expected = {k: v.shape for k, v in mlp.state_dict().items()}
            merged, problems = compare_keys(expected, [(Path(f"{path}[{entry}]"), stored[entry])])
            if problems:
                more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
                raise UserError(f"weights do not match the model: {problems[0]}{more}")
            mlp.load_state_dict(merged, strict=True, assign=any(t.is_meta for t in mlp.state_dict().values()))

    def save_pretrained(self, root: str | Path) -> LivePortraitLayout:
        """Write the official layout (plus ``liveportrait/config.json`` describing this architecture),
        staged beside ``root`` and moved in when complete (an interrupted save leaves no truncated file)."""
        from personalive_cli.io.outputs import staged_into

        with staged_into(root) as staging:
            layout = LivePortraitLayout.from_root(staging)
            (layout.liveportrait / "base_models").mkdir(parents=True)
            (layout.liveportrait / "retargeting_models").mkdir(parents=True)
            for name in BASE_FILES:
                state = {k: v.detach().cpu().contiguous() for k, v in getattr(self, name).state_dict().items()}
                torch.save(state, layout.base(name))
            nested = {entry: {f"module.{k}": v.detach().cpu().contiguous()
                              for k, v in getattr(self.stitching_retargeting_module, attr).state_dict().items()}
                      for attr, entry in FILE_ENTRIES.items()}
            torch.save(nested, layout.stitching)
            layout.config.write_text(json.dumps(self.config.to_dict(), indent=2))
        return LivePortraitLayout.from_root(root)

    def parameter_counts(self) -> dict[str, int]:
        return {name: sum(p.numel() for p in getattr(self, name).parameters())
                for name in [*BASE_FILES, "stitching_retargeting_module"]}


def check_layout(root: str | Path) -> list[dict]:
    """Per file: present, readable, keys and shapes as the model expects (``personalive weights check``)."""
    from personalive_cli.weights import compare_keys, read_state_dict

    layout = LivePortraitLayout.from_root(root)
    rows = []
    try:
        config = layout.read_config()
    except UserError as exc:
        rows.append({"file": str(layout.config), "status": "bad", "detail": str(exc)})
        config = LivePortraitConfig()
    with torch.device("meta"):
        models = LivePortraitModels(config)
    for name in BASE_FILES:
        path = layout.base(name)
        if not path.is_file():
            rows.append({"file": str(path), "status": "missing", "detail": "not found"})
            continue
        module = getattr(models, name)
        optional, ignorable = _base_load_rules(module)
        try:
            state = read_state_dict(path)
        except UserError as exc:
            rows.append({"file": str(path), "status": "bad", "detail": str(exc)})
            continue
        expected = {k: v.shape for k, v in module.state_dict().items()}
        _, problems = compare_keys(expected, [(path, state)], optional=optional, ignorable=ignorable)
        rows.append({"file": str(path), "status": "mismatch" if problems else "ok",
                     "detail": "; ".join(problems) if problems else f"{len(state)} keys match"})
    path = layout.stitching
    if not path.is_file():
        rows.append({"file": str(path), "status": "missing", "detail": "not found"})
    else:
        try:
            stored = read_stitching_file(path)
        except UserError as exc:
            rows.append({"file": str(path), "status": "bad", "detail": str(exc)})
        else:
            problems = []
            for attr, entry in FILE_ENTRIES.items():
                mlp = getattr(models.stitching_retargeting_module, attr)
                expected = {k: v.shape for k, v in mlp.state_dict().items()}
                problems += compare_keys(expected, [(Path(f"{path}[{entry}]"), stored[entry])])[1]
            rows.append({"file": str(path), "status": "mismatch" if problems else "ok",
                         "detail": "; ".join(problems) if problems else "3 MLPs match"})
    for onnx in layout.crop_models():
        rows.append({"file": str(onnx), "status": "ok" if onnx.is_file() else "optional",
                     "detail": "LivePortrait cropper" if onnx.is_file()
                     else "absent (the project's offline face detector crops instead)"})
    return rows


def download(root: str | Path | None = None) -> LivePortraitLayout:
    """Fetch the release (PyTorch checkpoints and the cropping ONNX models) into ``root`` (official
    layout), or with ``None`` into the hub cache, where :func:`resolve_weights` finds it."""
    from huggingface_hub import snapshot_download

    if root is not None:
        root = Path(root).expanduser()
        root.mkdir(parents=True, exist_ok=True)
    try:
        fetched = snapshot_download(HUB_REPO, local_dir=root, allow_patterns=HUB_PATTERNS)
        root = Path(fetched) if root is None else root
    except Exception as exc:  # noqa: BLE001 - network/hub errors become one line
        raise UserError(f"download of {HUB_REPO} failed: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    layout = LivePortraitLayout.from_root(root)
    if layout.missing():
        raise UserError(f"{HUB_REPO} did not provide {layout.missing()[0]}")
    return layout
