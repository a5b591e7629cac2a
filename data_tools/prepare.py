"""``personalive data prepare folder SRC DST``: raw videos → the bench's and training's form.

Each video under SRC becomes ``DST/videos/<id>.mp4``: face-centred square crops (the same
``FaceCropper`` as ``animate``: a square of 2× the face box, smoothed over time; ``crop="none"``:
whole frames resized) at ``size``, resampled to a fixed ``fps`` (exact rational resampling, no drift),
H.264 CRF 15, with the source's audio (if any) cut to the clip and kept in sync; plus, unless
``boxes=False``, its per-frame face boxes ``DST/boxes/<id>.npz`` and a row in ``train_manifest.csv``
(split ``train``). A clip whose first output frame shows no face is dropped and counted. Running,
resuming, sharding, workers and the manifests: :mod:`data_tools.runner`.

``DST/manifest.csv`` lists the clips for self-reenactment (reference = first frame); with ``cross=True``
and at least two videos it also pairs each driving video with the first frame of the next video
(``DST/references/<id>.png``) for cross-reenactment.

Ids: the path under SRC without extension, ``/`` → ``__``, spaces → ``_``; two sources giving the same id
(``a.mov`` and ``a.mp4``) are told apart by appending the extension to the later one in sorted order
(``a``, ``a_mp4``). A SRC in the training layout (every video under ``SRC/videos/``, as a VFHQ-style
folder) takes its ids from ``SRC/videos``. DST may lie inside SRC (its outputs are not taken as sources).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_tools.dataset_folder import SETTINGS_FILE
from data_tools.manifest import list_videos
from data_tools.runner import (
    ClipJob,
    PrepareEvents,
    PrepareOptions,
    PrepareResult,
    Rendering,
    run_jobs,
)
from personalive_cli.errors import UserError
from personalive_cli.faces.crop import CROP_MODES, FaceCropper
from personalive_cli.io.video import VideoReader

__all__ = ["SETTINGS_FILE", "FolderJob", "PrepareOptions", "PrepareResult", "folder_jobs", "prepare_boxes",
           "prepare_folder"]


@dataclass
class FolderJob(ClipJob):
    """A whole source video, face-cropped (or resized) and resampled."""

    path: str = ""

    def render(self, opts: PrepareOptions) -> Rendering:
        reader = VideoReader(self.path)
        indices = reader.resampled_indices(opts.frame_rate, limit=opts.max_frames)
        return Rendering(total=len(indices), frames=_cropped(reader, indices, opts),
                         audio_from=Path(self.path) if reader.info.has_audio else None,
                         audio_start=reader.frame_time(indices[0]) if indices else 0.0)


def _cropped(reader: VideoReader, indices: list[int], opts: PrepareOptions) -> Iterator[np.ndarray]:
    cropper = FaceCropper(opts.crop, opts.size)
    try:
        for frame in reader.iter_indices(indices):
            yield from cropper.crop(frame)
        yield from cropper.flush()
    finally:
        cropper.close()


def _video_id(root: Path, video: Path) -> str:
    return video.relative_to(root).with_suffix("").as_posix().replace("/", "__").replace(" ", "_")


def _video_ids(root: Path, videos: list[Path]) -> list[str]:
    """One distinct id per video (sorted order, so stable across resumed runs): a clash (``a.mp4`` and
    ``a.mov``, ``a b.mp4`` and ``a_b.mp4``) gets the extension, then a number, appended."""
    ids: list[str] = []
    taken: set[str] = set()
    for v in videos:
        vid = _video_id(root, v)
        if vid in taken:
            base = f"{vid}_{v.suffix.lstrip('.').lower()}"
            vid, n = base, 2
            while vid in taken:
                vid, n = f"{base}{n}", n + 1
        ids.append(vid)
        taken.add(vid)
    return ids


def folder_jobs(src: str | Path, dst: str | Path) -> list[FolderJob]:
    """One job per video under ``src`` (DST's own outputs excluded)."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(f"source folder not found: {src}")
    # DST may lie inside SRC: its own outputs are not sources (else a resumed run would refuse them)
    dst_abs = dst.absolute()
    videos = [v for v in list_videos(src) if dst_abs not in v.absolute().parents]
    if dst.resolve() in [p.resolve() for p in [src, *src.parents]] or any(
            dst.resolve() in v.resolve().parents for v in videos):
        raise UserError("DST must not contain the source videos")
    if not videos:
        raise UserError(f"no videos found in {src}")
    root = src / "videos"
    if not all(root in v.parents for v in videos):
        root = src
    return [FolderJob(id=vid, source=str(v), path=str(v)) for v, vid in zip(videos, _video_ids(root, videos),
                                                                            strict=True)]


def prepare_folder(src: str | Path, dst: str | Path, opts: PrepareOptions,
                   events: PrepareEvents | None = None) -> PrepareResult:
    if opts.crop not in CROP_MODES:
        raise UserError(f"unknown crop mode {opts.crop!r}; choose one of {', '.join(CROP_MODES)}")
    opts.validate()
    jobs = folder_jobs(src, dst)
    if opts.crop == "auto":
        from personalive_cli.extras import require_extra

        require_extra("faces", "--crop auto (or use --crop none)")
    return run_jobs(dst, jobs, opts, events, settings=opts.settings())


def prepare_boxes(data: str | Path, opts: PrepareOptions, events: PrepareEvents | None = None) -> PrepareResult:
    """Boxes and manifests, in place, for a folder of clips already in the training layout
    (``DATA/videos/<id>.mp4``, square; a VFHQ-style folder already at 512² and 25 fps): nothing is
    re-encoded. The clips keep their own size and rate (the manifest records them)."""
    data = Path(data)
    if not data.is_dir():
        raise UserError(f"dataset folder not found: {data}")
    videos = sorted(p for p in (data / "videos").glob("*.mp4") if p.is_file() and not p.name.startswith("."))
    if not videos:
        raise UserError(f"no clips in {data / 'videos'} (a dataset folder holds videos/<id>.mp4; to crop raw "
                        f"videos use `personalive data prepare folder SRC DST`)")
    from personalive_cli.extras import require_extra

    require_extra("train", "personalive data prepare boxes", modules=("mediapipe",))
    jobs = [ClipJob(id=v.stem, source=v.relative_to(data).as_posix()) for v in videos]
    return run_jobs(data, jobs, dataclasses.replace(opts, boxes=True), events, settings=None)
