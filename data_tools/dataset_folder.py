"""The shared files of a dataset folder, read and written under one lock by concurrent runs.

``DST/prepare.json`` records the settings the clips were made with (a run with other settings is
refused) and the splits the folder holds (val clips, an evaluation set, never join a folder of
training clips, nor the reverse, unless allowed). ``train_manifest.csv`` and the bench's ``manifest.csv``
are merged, not overwritten: the rows already there whose files still exist, plus the new ones. Every
read-modify-write holds an exclusive ``fcntl.flock`` on ``DST/.prepare.lock``, so concurrent shards of one
``personalive data prepare`` never lose each other's rows.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from data_tools.manifest import Entry, read_manifest, write_manifest
from personalive_cli.errors import UserError
from personalive_cli.io.video import VideoReader
from personalive_cli.training.clips import MANIFEST_NAME, TrainClip, write_train_manifest

SETTINGS_FILE = "prepare.json"
BENCH_MANIFEST = "manifest.csv"
LOCK_FILE = ".prepare.lock"


@contextlib.contextmanager
def locked(dst: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``DST/.prepare.lock``: one run at a time reads and writes the shared
    files (``prepare.json``, the manifests), whatever machine of a shared file system it runs on (as far
    as the file system honours flock)."""
    fd = os.open(dst / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _manifest_splits(dst: Path) -> set[str]:
    path = dst / MANIFEST_NAME
    if not path.is_file():
        return set()
    try:
        with path.open(newline="") as f:
            return {row.get("split") or "train" for row in csv.DictReader(f)}
    except (OSError, csv.Error, UnicodeDecodeError):
        return set()


def _split_refusal(dst: Path, split: str, held: list[str]) -> str:
    if split == "val":
        return (f"{dst} holds training clips and these are val clips (an evaluation set: TalkingHead-1KH's "
                "official test split); in one folder, training would see the test set. Use another DST, or "
                "--allow-val-in-train if that is what you want")
    return (f"{dst} holds {', '.join(held)} clips (an evaluation set) and these are training clips; in one "
            "folder, training would see the test set. Use another DST, or --allow-val-in-train if that is "
            "what you want")


def _checked(dst: Path, settings: dict | None, split: str, force: bool, allow_val_in_train: bool) -> tuple[dict, dict]:
    """(``prepare.json`` now, what it is to become), or the error refusing this run."""
    path = dst / SETTINGS_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    old = {k: v for k, v in data.items() if k != "splits"}
    if settings is not None and old and old != settings and not force:
        raise UserError(f"{dst} was prepared with other settings ({old}); use another DST or --force")
    splits = set(data.get("splits") or []) | _manifest_splits(dst)
    others = sorted(splits - {split})
    if others and not allow_val_in_train:
        raise UserError(_split_refusal(dst, split, others))
    kept = settings if settings is not None and (not old or force) else old
    return data, {**kept, "splits": sorted(splits | {split})}


def check_folder(dst: Path, settings: dict | None, split: str, force: bool = False,
                 allow_val_in_train: bool = False) -> None:
    """Refuse a run :func:`claim` would refuse, before writing anything (:func:`claim` decides)."""
    if dst.is_dir():
        _checked(dst, settings, split, force, allow_val_in_train)


def claim(dst: Path, settings: dict | None, split: str, force: bool = False, allow_val_in_train: bool = False) -> bool:
    """Check this run against ``prepare.json`` (settings, splits) and record it there, under the lock.
    ``settings`` None: clips made elsewhere (``prepare boxes``), nothing to compare. True when this
    run wrote ``prepare.json`` first."""
    with locked(dst):
        data, new = _checked(dst, settings, split, force, allow_val_in_train)
        if new != data:
            _write_json(dst / SETTINGS_FILE, new)
    return not data


# What the manifests say of one clip is a training-manifest row (``boxes`` empty for a clip without boxes,
# ``split`` empty for one known only from the bench manifest).
ClipRecord = TrainClip


class Records(dict):
    """id → :class:`ClipRecord`; ``cross``: whether the bench manifest has cross-reenactment pairs."""

    cross: bool = False


def read_records(dst: Path) -> Records:
    """The clips the folder's manifests list now: the bench manifest's, completed by the training one's."""
    records = Records()
    bench = dst / BENCH_MANIFEST
    if bench.is_file():
        for e in read_manifest(bench):
            if e.protocol == "self":
                records[e.id] = ClipRecord(e.id, e.driving, "", e.frames or 0, 0, e.fps or 0.0, "", e.source)
            else:
                records.cross = True
    train = dst / MANIFEST_NAME
    if train.is_file():
        try:
            with train.open(newline="") as f:
                rows = list(csv.DictReader(f))
            for row in rows:
                records[row["id"]] = ClipRecord(row["id"], row["video"], row["boxes"], int(row["frames"]),
                                                int(row["size"]), float(row["fps"]), row.get("split") or "train",
                                                row.get("source") or "")
        except (OSError, csv.Error, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"cannot read {train}: {exc} (delete it: runs over its clips rebuild it)") from None
    return records


def _existing(dst: Path) -> Callable[[str], bool]:
    """A test of "this relative path is a file", from one listing of videos/ and boxes/: hundreds of
    thousands of clips cost two directory reads, not a stat each (slow on network file systems)."""
    listed: set[str] = set()
    for sub in ("videos", "boxes"):
        with contextlib.suppress(FileNotFoundError), os.scandir(dst / sub) as it:
            listed.update(f"{sub}/{e.name}" for e in it if e.is_file())

    def exists(rel: str) -> bool:
        return rel in listed or (rel.split("/", 1)[0] not in ("videos", "boxes") and (dst / rel).is_file())

    return exists


def update_manifests(dst: Path, records: dict[str, ClipRecord], cross: bool = False) -> tuple[int, int]:
    """Merge ``records`` into the folder's manifests under the lock; rows whose files are gone are dropped.
    Returns (training rows, bench self-reenactment rows)."""
    with locked(dst):
        merged = read_records(dst)
        cross = cross or merged.cross
        merged.update(records)
        exists = _existing(dst)
        kept = sorted((r for r in merged.values() if exists(r.video)), key=lambda r: r.id)
        train = [replace(r, split=r.split or "train") for r in kept if r.boxes and exists(r.boxes)]
        if train:
            write_train_manifest(dst / MANIFEST_NAME, train)
        else:
            (dst / MANIFEST_NAME).unlink(missing_ok=True)
        selfs = [Entry(id=r.id, protocol="self", driving=r.video, frames=r.frames, fps=r.fps, source=r.source)
                 for r in kept]
        entries = list(selfs)
        if cross and len(selfs) >= 2:
            entries += _cross_pairs(dst, selfs)
        if entries:
            write_manifest(dst / BENCH_MANIFEST, entries)
    return len(train), len(selfs)


def _cross_pairs(dst: Path, selfs: list[Entry]) -> list[Entry]:
    """Driving video i with the first frame of video i+1 (mod n) as the reference."""
    from PIL import Image

    (dst / "references").mkdir(exist_ok=True)
    pairs = []
    for i, drv in enumerate(selfs):
        ref = selfs[(i + 1) % len(selfs)]
        ref_path = dst / "references" / f"{ref.id}.png"
        if not ref_path.is_file():
            frame = next(VideoReader(dst / ref.driving).iter_frames(0, 1))
            tmp = ref_path.with_name(f".{ref_path.name}.part.png")
            Image.fromarray(frame).save(tmp)
            tmp.replace(ref_path)
        pairs.append(Entry(id=f"{drv.id}__x__{ref.id}", protocol="cross", driving=drv.driving,
                           reference=ref_path.relative_to(dst).as_posix(), frames=drv.frames, fps=drv.fps))
    return pairs
