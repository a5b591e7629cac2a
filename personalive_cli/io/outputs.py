"""The one place that validates where a command writes, and writes there atomically.

Every command that writes a file or a folder goes through here, so each rule holds everywhere:

- an output is never one of the command's inputs (resolved paths and ``os.path.samefile``, so links
  and ``..`` tricks are caught) and never lies inside an input folder's files;
- its folder exists and is writable (one error naming the folder, not an ``OSError`` traceback);
- a video's container follows its extension (:data:`VIDEO_CONTAINERS`), anything else is refused;
- files are written to a hidden temporary name beside the target and renamed when complete
  (:func:`temp_path`); a folder a command creates is removed again if nothing was produced in it
  (:class:`NewFolder`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from personalive_cli.errors import UserError

# extension → (PyAV/ffmpeg muxer, video codec, audio codec)
VIDEO_CONTAINERS: dict[str, tuple[str, str, str]] = {
    ".mp4": ("mp4", "libx264", "aac"),
    ".mov": ("mov", "libx264", "aac"),
    ".mkv": ("matroska", "libx264", "aac"),
    ".webm": ("webm", "libvpx-vp9", "libopus"),
}


def video_container(path: str | Path) -> tuple[str, str, str]:
    """(muxer, video codec, audio codec) for ``path``'s extension, or a :class:`UserError` listing them."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_CONTAINERS:
        raise UserError(f"cannot write a video named {Path(path).name!r}: the extension picks the container; "
                        f"use one of {', '.join(VIDEO_CONTAINERS)}")
    return VIDEO_CONTAINERS[suffix]


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(output: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an output that is (a link to, or another name of) one of the inputs."""
    output = Path(output)
    for item in inputs:
        if item is None or str(item) == "-" or str(item).startswith("/dev/"):
            continue
        if _same(output, Path(item)):
            raise UserError(f"the output {output} is also an input ({item}); choose another output name")


def check_writable_folder(folder: Path) -> None:
    """The folder exists and this process can create files in it. Tried, not inferred from the mode
    bits: root passes every permission check yet still fails on a read-only file system."""
    if not folder.exists():
        raise UserError(f"output folder does not exist: {folder}")
    if not folder.is_dir():
        raise UserError(f"output folder {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".personalive-probe."):
            pass
    except OSError as exc:
        raise UserError(f"cannot write into {folder}: {exc.strerror or exc}") from None


def check_output_file(path: str | Path, inputs: Iterable[str | Path | None] = (), video: bool = True) -> Path:
    """Validate an output file before any work: container (for videos), not an input, writable folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"the output {path} is a folder; give a file name")
    if video:
        video_container(path)
    check_not_input(path, inputs)
    check_writable_folder(path.parent)
    return path


def check_output_folder(path: str | Path, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Validate an output folder before any work: not a file, not an input, and it (or the nearest
    existing folder above it, where it will be created) is writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file; give a folder")
    check_not_input(path, inputs)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {path}: {existing} is a file")
    check_writable_folder(existing)
    return path


def temp_path(target: Path, suffix: str | None = None) -> Path:
    """A new hidden temporary file beside ``target`` (same folder, so the final rename is atomic),
    with normal permissions (``mkstemp`` makes 0600)."""
    suffix = target.suffix if suffix is None else suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".part{suffix}", dir=target.parent)
    except OSError as exc:
        raise UserError(f"cannot write into {target.parent}: {exc.strerror or exc}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


class NewFolder:
    """A folder a command writes into, created on entry if absent. If the command then fails or is
    interrupted before any finished output exists in it, the folder (and any parents this call
    created) is removed again, so a failed run leaves nothing behind; once a finished output exists,
    everything is kept (a rerun resumes from it).

    A finished output is any file that is neither hidden (temporary files are) nor named in
    ``scaffolding`` (bookkeeping written before the work, e.g. a run's settings)."""

    def __init__(self, path: str | Path, scaffolding: Iterable[str] = ()):
        self.path = Path(path)
        self.scaffolding = set(scaffolding)
        self.created = False
        self._top = self.path

    def __enter__(self) -> NewFolder:
        if not self.path.exists():
            top = self.path  # the highest folder this call creates: that is what a failure removes
            while not top.parent.exists():
                top = top.parent
            try:
                self.path.mkdir(parents=True)
                self.created, self._top = True, top
            except FileExistsError:
                pass  # another process (a parallel bench shard) made it first: not ours to remove
            except OSError as exc:
                raise UserError(f"cannot create {self.path}: {exc.strerror or exc}") from None
        return self

    def holds_output(self) -> bool:
        return any(p.is_file() and not p.name.startswith(".") and p.name not in self.scaffolding
                   for p in self.path.rglob("*"))

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.created and not self.holds_output():
            shutil.rmtree(self._top, ignore_errors=True)


@contextlib.contextmanager
def staged_into(root: str | Path) -> Iterator[Path]:
    """Write a folder's contents atomically, part by part: yields a temporary folder beside ``root``;
    when the block ends normally, each top-level entry written there replaces its namesake in
    ``root`` (created if absent); if it fails or is interrupted, ``root`` is left as it was."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is a file; give a folder")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{root.name}.", dir=root.parent) as tmp:
        staging = Path(tmp)
        yield staging
        for part in staging.iterdir():
            final = root / part.name
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            os.replace(part, final)
