"""Bench manifests: which (reference, driving) pairs to run, and under which protocol.

A manifest is a CSV or JSON file with one entry per video::

    id,protocol,driving,reference
    clip001,self,videos/clip001.mp4,
    pair001,cross,videos/clip002.mp4,references/clip001.png

- ``protocol`` ``self`` (self-reenactment): reference = the first frame of ``driving``, ground truth =
  ``driving`` itself; ``reference`` is left empty. ``cross`` (cross-reenactment): ``reference`` is an
  image (or a video, whose first frame is used); there is no ground truth.
- Paths are relative to the manifest's folder (absolute paths are kept).
- JSON: a list of such objects, or ``{"items": [...]}``. Missing ``id`` → the driving file's stem;
  missing ``protocol`` → ``cross`` when a reference is given, else ``self``.

A plain folder of videos (no manifest) is read as self-reenactment of every video in it.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from personalive_cli.errors import UserError

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
MANIFEST_NAMES = ("manifest.csv", "manifest.json")
FIELDS = ("id", "protocol", "driving", "reference", "frames", "fps", "source")
PROTOCOLS = ("self", "cross")


@dataclass
class Entry:
    id: str
    protocol: str
    driving: str
    reference: str = ""
    frames: int | None = None
    fps: float | None = None
    source: str = ""

    def driving_path(self, root: Path) -> Path:
        return _resolve(root, self.driving)

    def reference_path(self, root: Path) -> Path | None:
        return _resolve(root, self.reference) if self.reference else None


def _resolve(root: Path, p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else root / path


def _entry(raw: dict, where: str) -> Entry:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected an object with 'driving' (and 'reference', 'protocol', ...), "
                        f"got {type(raw).__name__} {str(raw)[:60]!r}")
    driving = str(raw.get("driving") or raw.get("video") or "").strip()
    if not driving:
        raise UserError(f"{where}: entry without a 'driving' video: {raw}")
    reference = str(raw.get("reference") or "").strip()
    protocol = str(raw.get("protocol") or ("cross" if reference else "self")).strip().lower()
    if protocol not in PROTOCOLS:
        raise UserError(f"{where}: unknown protocol {protocol!r} (use self or cross)")
    if protocol == "cross" and not reference:
        raise UserError(f"{where}: cross-reenactment entry {driving!r} needs a 'reference'")
    frames = raw.get("frames")
    fps = raw.get("fps")
    try:
        frames = int(frames) if frames not in (None, "") else None
        if frames is not None and frames < 0:
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"{where}: 'frames' must be a whole number >= 0, got {frames!r}") from None
    try:
        fps = float(fps) if fps not in (None, "") else None
        if fps is not None and not fps > 0:
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"{where}: 'fps' must be a positive number, got {fps!r}") from None
    return Entry(id=str(raw.get("id") or Path(driving).stem).strip(), protocol=protocol, driving=driving,
                 reference=reference if protocol == "cross" else "", frames=frames, fps=fps,
                 source=str(raw.get("source") or ""))


def read_manifest(path: str | os.PathLike) -> list[Entry]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            rows = data.get("items", []) if isinstance(data, dict) else data
            if not isinstance(rows, list):
                raise UserError(f"{path}: expected a list of entries or {{'items': [...]}}")
        elif path.suffix.lower() == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            raise UserError(f"unknown manifest format {path.suffix!r}: use .csv or .json")
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read manifest {path}: {exc}") from None
    entries = [_entry(r, f"{path.name} entry {i + 1}") for i, r in enumerate(rows)]
    dup = sorted(i for i, n in Counter(e.id for e in entries).items() if n > 1)  # linear: manifests get huge
    if dup:
        raise UserError(f"{path}: duplicate ids {', '.join(dup[:5])}")
    return entries


def write_manifest(path: str | os.PathLike, entries: list[Entry]) -> Path:
    """Write atomically (temporary file + rename); CSV or JSON by the suffix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    # attribute reads, not dataclasses.asdict (a deep copy per row: seconds for a large dataset)
    rows = [{k: ("" if (v := getattr(e, k)) is None else v) for k in FIELDS} for e in entries]
    if path.suffix.lower() == ".json":
        tmp.write_text(json.dumps({"items": rows}, indent=2))
    else:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(FIELDS))
            w.writeheader()
            w.writerows(rows)
    os.replace(tmp, path)
    return path


def list_videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTS
                  and not p.name.startswith("."))


def load_dataset(path: str | os.PathLike) -> tuple[Path, list[Entry]]:
    """A manifest file, a folder holding ``manifest.csv``/``manifest.json``, or a folder of videos
    (self-reenactment of each). Returns (root for relative paths, entries)."""
    path = Path(path)
    if path.is_file():
        return path.parent, read_manifest(path)
    if not path.is_dir():
        raise UserError(f"dataset not found: {path}")
    for name in MANIFEST_NAMES:
        if (path / name).is_file():
            return path, read_manifest(path / name)
    videos = list_videos(path)
    if not videos:
        raise UserError(f"no videos ({', '.join(VIDEO_EXTS)}) and no manifest in {path}")
    entries = []
    seen: set[str] = set()
    for v in videos:
        rel = v.relative_to(path)
        eid = rel.with_suffix("").as_posix().replace("/", "__")
        if eid in seen:
            eid = rel.as_posix().replace("/", "__")
        seen.add(eid)
        entries.append(Entry(id=eid, protocol="self", driving=rel.as_posix()))
    return path, entries
