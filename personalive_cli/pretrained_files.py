"""Third-party pretrained files (torchvision trunks and the like) that the toolkit never downloads itself:
where each one is looked for, and the one-line message when it is not there.

Lookup order for a file: the explicit path given by the caller (which must then exist), then
``weights_dir`` (the file directly in it, or in one of its known sub-folders), then the owning package's
standard cache (torch hub's ``checkpoints/`` for torchvision files). The benchmarks extend the cache list
(see ``benchmarks.metrics.weights``); the core uses it for the training losses' LPIPS-VGG.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from personalive_cli.errors import UserError

__all__ = ["VGG16", "WeightFile", "WeightsFileError", "torch_hub_checkpoints"]


class WeightsFileError(UserError):
    """A pretrained file is missing or unreadable. One line: ``"<label>: <reason>"``.

    ``searched`` lists the paths looked at (for a verbose report).
    """

    def __init__(self, label: str, reason: str, searched: list | None = None):
        self.label = label
        self.reason = reason
        self.searched = list(searched or [])
        super().__init__(f"{label}: {reason}")


def torch_hub_checkpoints() -> Path:
    """torch hub's download folder (``$TORCH_HOME/hub/checkpoints``), computed on each call."""
    try:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints"
    except Exception:  # pragma: no cover - torch is a core dependency
        return Path(os.path.expanduser("~/.cache/torch/hub/checkpoints"))


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file, found locally."""

    label: str  # what needs it, e.g. "LPIPS"; starts the error message
    filename: str
    url: str
    how: str  # how to get it, one short clause
    subdirs: tuple[str, ...] = ()  # sub-folders of weights_dir also searched
    cache: str = ""  # the owning package's cache: "torch_hub" | "" (subclasses may add their own)
    cache_globs: tuple[str, ...] = field(default=())  # extra glob patterns (package caches)

    def standard_locations(self) -> list[Path]:
        """The package's own cache locations (computed on each call: env vars may change)."""
        return [torch_hub_checkpoints() / self.filename] if self.cache == "torch_hub" else []

    def candidates(self, path: str | os.PathLike | None = None,
                   weights_dir: str | os.PathLike | None = None) -> list[Path]:
        out: list[Path] = []
        if path is not None:
            out.append(Path(path).expanduser())
        if weights_dir is not None:
            wd = Path(weights_dir).expanduser()
            out.append(wd / self.filename)
            out.extend(wd / sub / self.filename for sub in self.subdirs)
        out.extend(self.standard_locations())
        for pattern in self.cache_globs:
            out.extend(Path(p) for p in sorted(glob.glob(os.path.expanduser(pattern))))
        return out

    def missing_message(self, explicit: Path | None = None) -> str:
        what = str(explicit) if explicit is not None else self.filename
        return f"{what} not found; {self.how}"

    def resolve(self, path: str | os.PathLike | None = None,
                weights_dir: str | os.PathLike | None = None) -> Path:
        """The first existing candidate. An explicit ``path`` that does not exist is an error by itself.

        Raises WeightsFileError (its ``searched`` lists the paths looked at).
        """
        if path is not None:
            p = Path(path).expanduser()
            if not p.is_file():
                raise WeightsFileError(self.label, self.missing_message(p), [p])
        looked = self.candidates(path, weights_dir)
        for p in looked:
            if p.is_file():
                return p
        raise WeightsFileError(self.label, self.missing_message(), looked)

    def find(self, path=None, weights_dir=None) -> Path | None:
        try:
            return self.resolve(path, weights_dir)
        except WeightsFileError:
            return None


#: torchvision's ImageNet VGG16: the trunk of LPIPS-VGG (the training loss). ``lpips.LPIPS(net='vgg')``
#: would download it into torch hub's cache; we only read it from there or from an explicit path.
VGG16 = WeightFile(
    label="LPIPS-VGG",
    filename="vgg16-397923af.pth",
    url="https://download.pytorch.org/models/vgg16-397923af.pth",
    how=("download https://download.pytorch.org/models/vgg16-397923af.pth (torchvision's ImageNet VGG16, "
         "what `lpips.LPIPS(net='vgg')` fetches online) into ~/.cache/torch/hub/checkpoints/ or pass its path"),
    subdirs=("lpips",),
    cache="torch_hub",
)
