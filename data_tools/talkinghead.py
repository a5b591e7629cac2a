"""``personalive data prepare talkinghead-1kh TUBES RAW DST``: TalkingHead-1KH tubes → square clips.

TalkingHead-1KH (tcwang0509/TalkingHead-1KH) ships YouTube ids and "tube" files, one clip per line::

    name,H,W,S,E,L,T,R,B        e.g.  <ytid>_0003,1080,1920,120,480,700,80,1180,560

``name`` is a 1-minute segment of the downloaded video (``RAW/<name>.mp4``: the official script cuts
each download into ``<ytid>_%04d.mp4`` pieces with an ffmpeg stream copy), ``S..E`` its frames
(inclusive), ``L,T,R,B`` the face box in a ``W``×``H`` frame. As the official ``videos_crop.py`` does,
the box is rescaled to the segment's real resolution (whole pixels, truncated); then, unlike it, the crop
is resized to ``size`` (squashed if the tube is not square: tubes are drawn square up to rounding) and
resampled to ``fps``; the official crops keep the source size and rate. No audio (the downloads are
video-only). Clip ids are the official cropped files' names, ``<name>_S<S>_E<E>_L<L>_T<T>_R<R>_B<B>``.

Nothing is downloaded here: tubes whose segment is missing are counted, their YouTube ids written to
``DST/missing_videos.txt`` (the format of the official ``*_video_ids.txt``), and the rest is prepared.

Splits: ``val_video_tubes.txt`` is the official evaluation set (1080p only; the test split of
LivePortrait and PersonaLive): its clips get split ``val`` in ``train_manifest.csv`` and are never put
into a folder of training clips, nor training clips into a folder of val clips, unless asked
(``allow_val_in_train``). ``train_…`` and ``small_…`` files are ``train``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_tools.dataset_folder import check_folder
from data_tools.runner import (
    ClipJob,
    PrepareEvents,
    PrepareOptions,
    PrepareResult,
    Rendering,
    run_jobs,
)
from personalive_cli.errors import UserError
from personalive_cli.faces.crop import resize
from personalive_cli.io.outputs import check_output_folder
from personalive_cli.io.video import VideoReader

MISSING_FILE = "missing_videos.txt"
FIELDS = "name,H,W,S,E,L,T,R,B"


@dataclass(frozen=True)
class Tube:
    name: str
    H: int
    W: int
    S: int
    E: int
    L: int
    T: int
    R: int
    B: int

    @property
    def clip_id(self) -> str:
        return f"{self.name}_S{self.S}_E{self.E}_L{self.L}_T{self.T}_R{self.R}_B{self.B}"

    @property
    def video_id(self) -> str:
        """The YouTube id: the name without its ``_NNNN`` segment number."""
        head, _, tail = self.name.rpartition("_")
        return head if head and tail.isdigit() else self.name

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in a ``width``×``height`` frame: the official rescale, then clipped."""
        left, right = int(self.L / self.W * width), int(self.R / self.W * width)
        top, bottom = int(self.T / self.H * height), int(self.B / self.H * height)
        left, top = max(0, left), max(0, top)
        right, bottom = min(width, right), min(height, bottom)
        if right - left < 2 or bottom - top < 2:
            raise UserError(f"tube {self.clip_id}: its box lies outside the {width}x{height} video")
        return left, top, right, bottom


def read_tubes(path: str | os.PathLike) -> list[Tube]:
    """Every tube of a tube file (duplicates once); a malformed line is one error naming its number."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tube file not found: {path}")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    tubes: dict[str, Tube] = {}
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        where = f"{path.name} line {no}"
        if len(parts) != 9 or not parts[0]:
            raise UserError(f"{where}: expected 9 comma-separated values {FIELDS}, got {line.strip()[:80]!r}")
        try:
            nums = [int(p) for p in parts[1:]]
        except ValueError:
            raise UserError(f"{where}: H,W,S,E,L,T,R,B must be whole numbers, got {line.strip()[:80]!r}") from None
        tube = Tube(parts[0], *nums)
        if tube.H <= 0 or tube.W <= 0 or not 0 <= tube.S <= tube.E or tube.L >= tube.R or tube.T >= tube.B:
            raise UserError(f"{where}: needs H, W > 0, 0 <= S <= E, L < R and T < B, got {line.strip()[:80]!r}")
        tubes.setdefault(tube.clip_id, tube)
    if not tubes:
        raise UserError(f"{path} lists no tubes (expected lines {FIELDS})")
    return list(tubes.values())


def tube_split(path: str | os.PathLike, split: str | None, allow_val_in_train: bool = False) -> str:
    """The split of a tube file: from its official name, or ``split``."""
    name = Path(path).name
    named = "val" if name.startswith("val_") else "train" if name.startswith(("train_", "small_")) else None
    if split is None:
        if named is None:
            raise UserError(f"cannot tell the split of {name} (the official files are train_, small_ and "
                            "val_video_tubes.txt): give --split train or --split val")
        return named
    if named == "val" and split == "train" and not allow_val_in_train:
        raise UserError(f"{name} is the official val split (the evaluation set); marking it --split train would "
                        "train on the test set. Add --allow-val-in-train if that is what you want")
    return split


@dataclass
class TubeJob(ClipJob):
    """One tube: frames S..E of a raw segment, cropped, resized and resampled."""

    raw: str = ""
    tube: Tube | None = None

    def render(self, opts: PrepareOptions) -> Rendering:
        reader = VideoReader(self.raw, role="raw video")
        t = self.tube
        if t.S >= len(reader):
            raise UserError(f"tube {t.clip_id} starts at frame {t.S} but {self.raw} has {len(reader)} frames")
        box = t.box(reader.info.height, reader.info.width)
        indices = reader.resampled_indices(opts.frame_rate, limit=opts.max_frames, start=t.S, stop=t.E + 1)
        return Rendering(total=len(indices), frames=_crops(reader, indices, box, opts.size))


def _crops(reader: VideoReader, indices: list[int], box: tuple[int, int, int, int], size: int) -> Iterator[np.ndarray]:
    left, top, right, bottom = box
    for frame in reader.iter_indices(indices):
        yield resize(np.ascontiguousarray(frame[top:bottom, left:right]), size)


@dataclass
class TubesResult(PrepareResult):
    tubes: int = 0  # tubes in the file
    missing: list[str] = field(default_factory=list)  # raw segments (names) missing in RAW
    missing_ids: list[str] = field(default_factory=list)  # their YouTube ids
    missing_file: Path | None = None
    split: str = "train"


def fetch_hint(missing_file: Path, raw: Path) -> str:
    """How to fetch the missing videos (the official pipeline, with yt-dlp in place of pytube)."""
    return (f"fetch them, then run this command again:\n"
            f"  yt-dlp -f 'bv*[ext=mp4]' -o 'downloads/%(id)s.mp4' -a {missing_file}\n"
            f"  for f in downloads/*.mp4; do n=$(basename \"$f\" .mp4); ffmpeg -i \"$f\" -c copy -map 0 "
            f"-segment_time 00:01:00 -f segment \"{raw}/${{n}}_%04d.mp4\"; done")


def _write_missing(dst: Path, ids: list[str]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    path = dst / MISSING_FILE
    tmp = path.with_name(f".{MISSING_FILE}.part")
    tmp.write_text("".join(f"{i}\n" for i in ids))
    os.replace(tmp, path)
    return path


def prepare_talkinghead(tubes_file: str | Path, raw: str | Path, dst: str | Path, opts: PrepareOptions,
                        events: PrepareEvents | None = None, split: str | None = None) -> TubesResult:
    tubes_file, raw, dst = Path(tubes_file), Path(raw), Path(dst)
    tubes = read_tubes(tubes_file)
    if not raw.is_dir():
        raise UserError(f"raw video folder not found: {raw}")
    opts = dataclasses.replace(opts, crop="tube", split=tube_split(tubes_file, split, opts.allow_val_in_train))
    opts.validate()
    check_output_folder(dst)
    check_folder(dst, opts.settings(), opts.split, opts.force, opts.allow_val_in_train)  # a refused run writes nothing, not even the missing list
    present = {name: (raw / f"{name}.mp4").is_file() for name in {t.name for t in tubes}}
    missing = [t for t in tubes if not present[t.name]]
    if len(missing) == len(tubes):  # nothing to do yet: an error, and nothing written
        example = sorted(present)[0]
        raise UserError(f"none of the {len(present)} raw videos named in {tubes_file.name} is in {raw} (e.g. "
                        f"{example}.mp4): download them first (their YouTube ids are the official "
                        f"{opts.split}_video_ids.txt; see `personalive data prepare talkinghead-1kh --help`)")
    result_extra = {"tubes": len(tubes), "missing": sorted({t.name for t in missing}),
                    "missing_ids": sorted({t.video_id for t in missing}), "split": opts.split}
    if missing:
        result_extra["missing_file"] = _write_missing(dst, result_extra["missing_ids"])
    else:
        (dst / MISSING_FILE).unlink(missing_ok=True)  # from an earlier run: all there now
    # shards are cut over every tube, present or not, so a clip's shard does not move as downloads arrive
    i, n = opts.shard
    mine = sorted(tubes, key=lambda t: t.clip_id)[i::n]
    jobs = [TubeJob(id=t.clip_id, source=str(raw / f"{t.name}.mp4"), raw=str(raw / f"{t.name}.mp4"), tube=t)
            for t in mine if present[t.name]]
    base = run_jobs(dst, jobs, dataclasses.replace(opts, shard=(0, 1)), events, settings=opts.settings())
    return TubesResult(**{f.name: getattr(base, f.name) for f in dataclasses.fields(PrepareResult)}, **result_extra)
