"""``personalive data prepare folder SRC DST``: raw videos → the bench's form.

Each video under SRC becomes ``DST/videos/<id>.mp4``: face-centred square crops (the same
``FaceCropper`` as ``animate``: a square of 2× the face box, smoothed over time) resized to ``size``,
resampled to a fixed ``fps`` (exact rational resampling, no drift), H.264 CRF 15, with the source's
audio (if any) cut to the clip and kept in sync.
``DST/manifest.csv`` lists them for self-reenactment (reference = first frame); with ``cross=True``
and at least two videos it also pairs each driving video with the first frame of the next video
(``DST/references/<id>.png``) for cross-reenactment.

Ids: the path under SRC without extension, ``/`` → ``__``, spaces → ``_``; two sources giving the same id
(``a.mov`` and ``a.mp4``) are told apart by appending the extension to the later one in sorted order
(``a``, ``a_mp4``). DST may lie inside SRC
(its outputs are not taken as sources).

Resumable: a video whose output exists is skipped (outputs are written to a temporary name and
renamed when complete, so an existing file is a finished one). ``DST/prepare.json`` (written atomically) records the
settings; preparing into it again with other settings is refused unless ``force``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

from data_tools.manifest import Entry, list_videos, write_manifest
from personalive_cli.errors import UserError
from personalive_cli.faces.crop import FaceCropper
from personalive_cli.io.outputs import NewFolder, check_output_folder
from personalive_cli.io.video import VideoReader, VideoWriter

SETTINGS_FILE = "prepare.json"


@dataclass
class PrepareOptions:
    size: int = 512
    fps: float = 25.0
    crop: str = "auto"
    max_frames: int | None = None
    cross: bool = False
    crf: int = 15
    force: bool = False

    def settings(self) -> dict:
        d = asdict(self)
        d.pop("force")
        d.pop("cross")
        return d


@dataclass
class PrepareResult:
    manifest: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _video_id(src: Path, video: Path) -> str:
    return video.relative_to(src).with_suffix("").as_posix().replace("/", "__").replace(" ", "_")


def _video_ids(src: Path, videos: list[Path]) -> list[str]:
    """One distinct id per video (sorted order, so stable across resumed runs): a clash (``a.mp4`` and
    ``a.mov``, ``a b.mp4`` and ``a_b.mp4``) gets the extension, then a number, appended."""
    ids: list[str] = []
    taken: set[str] = set()
    for v in videos:
        vid = _video_id(src, v)
        if vid in taken:
            base = f"{vid}_{v.suffix.lstrip('.').lower()}"
            vid, n = base, 2
            while vid in taken:
                vid, n = f"{base}{n}", n + 1
        ids.append(vid)
        taken.add(vid)
    return ids


def prepare_folder(src: str | Path, dst: str | Path, opts: PrepareOptions,
                   on_start: Callable[[int], None] | None = None,
                   on_video: Callable[[str, int], None] | None = None,
                   on_frame: Callable[[], None] | None = None) -> PrepareResult:
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(f"source folder not found: {src}")
    if opts.size < 64 or opts.fps <= 0:
        raise UserError("--size must be at least 64 and --fps positive")
    if opts.max_frames is not None and opts.max_frames < 1:
        raise UserError("--max-frames must be at least 1")
    # DST may lie inside SRC: its own outputs are not sources (else a resumed run would refuse them)
    dst_abs = dst.absolute()
    videos = [v for v in list_videos(src) if dst_abs not in v.absolute().parents]
    if dst.resolve() in [p.resolve() for p in [src, *src.parents]] or any(
            dst.resolve() in v.resolve().parents for v in videos):
        raise UserError("DST must not contain the source videos")
    if not videos:
        raise UserError(f"no videos found in {src}")
    check_output_folder(dst)
    settings_path = dst / SETTINGS_FILE
    settings = opts.settings()
    if settings_path.is_file() and not opts.force:
        old = json.loads(settings_path.read_text())
        if old != settings:
            raise UserError(f"{dst} was prepared with other settings ({old}); use another DST or --force")
    # Folders this run creates are removed again if it ends without one finished clip.
    with NewFolder(dst), NewFolder(dst / "videos"):
        return _prepare_all(src, dst, videos, opts, on_start, on_video, on_frame)


def _prepare_all(src: Path, dst: Path, videos: list[Path], opts: PrepareOptions, on_start, on_video,
                 on_frame) -> PrepareResult:
    settings_path = dst / SETTINGS_FILE
    fps = Fraction(opts.fps).limit_denominator(1001)
    result = PrepareResult(manifest=dst / "manifest.csv")
    entries: list[Entry] = []

    def record(entry: Entry) -> None:
        if not entries:  # the settings are written with the first finished clip, not before
            tmp = settings_path.with_name(f".{SETTINGS_FILE}.part")
            tmp.write_text(json.dumps(opts.settings(), indent=2))
            os.replace(tmp, settings_path)
        entries.append(entry)

    if on_start:
        on_start(len(videos))
    for video, vid in zip(videos, _video_ids(src, videos), strict=True):
        out = dst / "videos" / f"{vid}.mp4"
        rel = out.relative_to(dst).as_posix()
        if out.is_file() and not opts.force:
            result.skipped.append(vid)
            n = len(VideoReader(out))
            record(Entry(id=vid, protocol="self", driving=rel, frames=n, fps=float(fps), source=str(video)))
            if on_video:
                on_video(vid, 0)
            continue
        try:
            n = _prepare_one(video, out, fps, opts, lambda total, v=vid: on_video and on_video(v, total), on_frame)
        except UserError as exc:
            result.failed[vid] = str(exc)
            continue
        result.done.append(vid)
        record(Entry(id=vid, protocol="self", driving=rel, frames=n, fps=float(fps), source=str(video)))
        write_manifest(result.manifest, entries)  # progress survives an interruption
    if opts.cross and len(entries) >= 2:
        entries += _cross_pairs(dst, entries)
    if not entries:
        raise UserError(f"no video could be prepared: {'; '.join(f'{k}: {v}' for k, v in result.failed.items())}")
    write_manifest(result.manifest, entries)
    return result


def _prepare_one(video: Path, out: Path, fps: Fraction, opts: PrepareOptions, on_total, on_frame) -> int:
    reader = VideoReader(video)
    indices = reader.resampled_indices(fps, limit=opts.max_frames)
    on_total(len(indices))
    cropper = FaceCropper(opts.crop, opts.size)
    # the driving audio is kept (cut to the clip, in sync) for audio-driven baselines
    writer = VideoWriter(out, fps, crf=opts.crf, audio_from=video if reader.info.has_audio else None,
                         audio_start=reader.frame_time(indices[0]) if indices else 0.0)
    try:
        for frame in reader.iter_indices(indices):
            for cropped in cropper.crop(frame):
                writer.write(cropped)
                if on_frame:
                    on_frame()
        for cropped in cropper.flush():
            writer.write(cropped)
        n = writer.frames
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        cropper.close()
    return n


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
