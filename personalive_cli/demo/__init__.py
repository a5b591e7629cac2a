"""A short demo bundled with the package (see NOTICE): the official release's portrait and the first
four seconds of its driving video, so `personalive demo` works from any folder with no files of the
user's own."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def demo_files() -> tuple[Path, Path]:
    """(portrait, driving video) as paths on disk."""
    root = files(__name__)
    return Path(str(root / "portrait.jpg")), Path(str(root / "driving.mp4"))
