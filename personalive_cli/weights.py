"""Checkpoint layout, exact loading, checking and download of the PersonaLive release.

The official layout under one folder (``pretrained_weights/`` in the official repo)::

    personalive/{denoising_unet,temporal_module,reference_unet,pose_guider,motion_encoder,motion_extractor}.pth
    sd-image-variations-diffusers/unet/config.json          (only the config is needed)
    sd-image-variations-diffusers/image_encoder/            (CLIP ViT-L/14 + projection)
    sd-vae-ft-mse/                                          (AutoencoderKL)
    taesd/                                                  (optional AutoencoderTiny, for --vae tiny)

Each checkpoint may be ``.pth``, ``.bin`` or ``.safetensors``. Loading is exact: every key must land
in a parameter of the right shape and every parameter must be covered; anything else is reported
by file and key name. A ``personalive/config.json`` (our addition, absent from the release) holds
the architecture of a non-default build such as the tiny test model.

Where weights come from: ``--weights DIR``, then ``$PERSONALIVE_WEIGHTS``, then the Hugging Face
hub cache filled by ``personalive weights download`` (without DIR).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from personalive_cli.errors import UserError

PERSONALIVE_FILES = ("denoising_unet", "temporal_module", "reference_unet", "pose_guider", "motion_encoder",
                     "motion_extractor")
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".bin")
HUB_REPOS = {
    "personalive": "huaichang/PersonaLive",
    "sd-image-variations-diffusers": "lambdalabs/sd-image-variations-diffusers",
    "sd-vae-ft-mse": "stabilityai/sd-vae-ft-mse",
    "taesd": "madebyollin/taesd",
}
HUB_PATTERNS = {
    "personalive": ["*personalive/*.pth"],
    "sd-image-variations-diffusers": ["unet/config.json", "image_encoder/*.json", "image_encoder/*.bin",
                                      "image_encoder/*.safetensors"],
    "sd-vae-ft-mse": ["config.json", "*.safetensors"],
    "taesd": ["config.json", "*.safetensors"],
}
DOWNLOAD_HINT = ("run `personalive weights download` (hub cache, found automatically), "
                 "or `personalive weights download DIR` and pass --weights DIR")


@dataclass(frozen=True)
class WeightsLayout:
    """Where each component of a PersonaLive weights folder lives."""

    personalive: Path
    unet_config: Path
    image_encoder: Path
    vae: Path
    taesd: Path | None = None

    @classmethod
    def from_root(cls, root: str | Path) -> WeightsLayout:
        root = Path(root).expanduser()
        if (root / "pretrained_weights").is_dir() and not (root / "personalive").is_dir():
            root = root / "pretrained_weights"  # the official repo's checkout
        base = root / "sd-image-variations-diffusers"
        taesd = root / "taesd"
        return cls(personalive=root / "personalive", unet_config=base / "unet" / "config.json",
                   image_encoder=base / "image_encoder", vae=root / "sd-vae-ft-mse",
                   taesd=taesd if taesd.is_dir() else None)

    def checkpoint(self, stem: str) -> Path:
        """The file of one ``personalive/*`` checkpoint, or a :class:`UserError` naming it."""
        found = find_checkpoint(self.personalive, stem)
        if found is None:
            raise UserError(f"missing weights file {self.personalive / (stem + '.pth')}; {DOWNLOAD_HINT}")
        return found

    def missing(self) -> list[Path]:
        """Required files or folders that are not there."""
        out = [self.personalive / f"{stem}.pth" for stem in PERSONALIVE_FILES
               if find_checkpoint(self.personalive, stem) is None]
        for path in (self.unet_config, self.image_encoder / "config.json", self.vae / "config.json"):
            if not path.is_file():
                out.append(path)
        return out


def find_checkpoint(folder: Path, stem: str) -> Path | None:
    for suffix in CHECKPOINT_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _hub_layout() -> WeightsLayout | None:
    """The layout assembled from the hub cache, if ``personalive weights download`` filled it."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return None
    snaps = {}
    for key in ("personalive", "sd-image-variations-diffusers", "sd-vae-ft-mse"):
        try:
            snaps[key] = Path(snapshot_download(HUB_REPOS[key], local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            return None
    found = next(iter(sorted(snaps["personalive"].rglob("denoising_unet.pth"))), None)
    if found is None:
        return None
    try:
        taesd = Path(snapshot_download(HUB_REPOS["taesd"], local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        taesd = None
    base = snaps["sd-image-variations-diffusers"]
    return WeightsLayout(personalive=found.parent, unet_config=base / "unet" / "config.json",
                         image_encoder=base / "image_encoder", vae=snaps["sd-vae-ft-mse"], taesd=taesd)


def resolve_weights(weights: str | Path | None) -> WeightsLayout:
    """``--weights``, then ``$PERSONALIVE_WEIGHTS``, then the hub cache; a one-line error when absent."""
    source = weights or os.environ.get("PERSONALIVE_WEIGHTS")
    if source:
        root = Path(source).expanduser()
        if not root.is_dir():
            raise UserError(f"weights folder not found: {root}; {DOWNLOAD_HINT}")
        layout = WeightsLayout.from_root(root)
        missing = layout.missing()
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"not a PersonaLive weights folder: missing {missing[0]}{more}; "
                            f"`personalive weights check {root}` lists what is there")
        return layout
    layout = _hub_layout()
    if layout is None:
        raise UserError(f"PersonaLive weights not found (no --weights, PERSONALIVE_WEIGHTS or hub cache); {DOWNLOAD_HINT}")
    return layout


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint file as a flat ``{key: tensor}`` dict on the CPU; a clear error if it is damaged.

    ``.pth``/``.bin`` files are memory-mapped (multi-GB files load without a second copy), so the
    tensors read the file lazily: don't overwrite a file while its tensors are in use."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse means a damaged or foreign file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read checkpoint {path} ({reason}); the file may be truncated: "
                        f"download it again with `personalive weights download`") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict of tensors")
    return dict(state)


def _short(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def compare_keys(expected: Mapping[str, torch.Size], sources: Iterable[tuple[Path, Mapping[str, torch.Tensor]]],
                 optional: Iterable[str] = (), ignorable: Iterable[str] = ()) -> tuple[dict, list[str]]:
    """Merge ``sources`` and list every problem against ``expected`` shapes.

    ``optional``: expected keys a file may omit (deterministic buffers). ``ignorable``: extra keys a
    file may carry. A key present in two files is a problem (which copy is meant is not ours to
    guess). Returns (merged state, problems), each problem naming its file and key.
    """
    optional, ignorable = set(optional), set(ignorable)
    merged: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    problems = []
    for path, state in sources:
        for key, value in state.items():
            if key in origin and key not in ignorable:
                problems.append(f"{origin[key]} and {path} both hold key {key}")
                continue
            merged[key] = value
            origin[key] = path
    for key, value in merged.items():
        if key in expected and tuple(value.shape) != tuple(expected[key]):
            problems.append(f"{origin[key]}: key {key} has shape {tuple(value.shape)}, expected {tuple(expected[key])}")
    unexpected = sorted(k for k in merged if k not in expected and k not in ignorable)
    if unexpected:
        files = sorted({str(origin[k]) for k in unexpected})
        problems.append(f"{', '.join(files)}: unexpected keys {_short(unexpected)}")
    missing = sorted(k for k in expected if k not in merged and k not in optional)
    if missing:
        files = ", ".join(str(p) for p in dict.fromkeys(origin.values())) or "(no file)"
        problems.append(f"{files}: missing keys {_short(missing)}")
    return {k: v for k, v in merged.items() if k in expected}, problems


def load_exact(module: torch.nn.Module, files: list[Path], optional: Iterable[str] = (),
               ignorable: Iterable[str] = ()) -> None:
    """Load ``files`` into ``module``; every key and every parameter must match, once."""
    expected = {k: v.shape for k, v in module.state_dict().items()}
    merged, problems = compare_keys(expected, [(p, read_state_dict(p)) for p in files], optional, ignorable)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise UserError(f"weights do not match the model: {problems[0]}{more}")
    module.load_state_dict(merged, strict=False, assign=any(t.is_meta for t in module.state_dict().values()))


def download(root: str | Path | None = None, include_taesd: bool = False) -> WeightsLayout:
    """Fetch the release and the base models (resumable): into the Hugging Face hub cache, where
    :func:`resolve_weights` finds them without ``--weights``, or with ``root`` into that folder in the
    official layout."""
    from huggingface_hub import snapshot_download

    keys = ["personalive", "sd-image-variations-diffusers", "sd-vae-ft-mse"] + (["taesd"] if include_taesd else [])
    root = Path(root).expanduser() if root is not None else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    for key in keys:
        target = None if root is None else (root / key if key != "personalive" else root / "_personalive_repo")
        try:
            snapshot_download(HUB_REPOS[key], local_dir=target, allow_patterns=HUB_PATTERNS[key])
        except Exception as exc:  # noqa: BLE001 - network/hub errors become one line
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"download of {HUB_REPOS[key]} failed: {reason}") from None
    if root is None:
        layout = _hub_layout()
        if layout is None:
            raise UserError(f"{HUB_REPOS['personalive']} has no denoising_unet.pth")
        return layout
    # The release keeps its .pth files under some sub-folder; link them into <root>/personalive/.
    (root / "personalive").mkdir(exist_ok=True)
    for stem in PERSONALIVE_FILES:
        found = next(iter(sorted((root / "_personalive_repo").rglob(f"{stem}.pth"))), None)
        if found is None:
            raise UserError(f"{HUB_REPOS['personalive']} has no {stem}.pth")
        link = root / "personalive" / f"{stem}.pth"
        if not link.exists():
            os.symlink(os.path.relpath(found, link.parent), link)
    config = found.parent / "config.json"  # only a non-default (e.g. tiny) build carries one
    if config.is_file() and not (root / "personalive" / "config.json").exists():
        os.symlink(os.path.relpath(config, root / "personalive"), root / "personalive" / "config.json")
    return WeightsLayout.from_root(root)
