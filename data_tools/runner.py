"""Running clip jobs into a dataset folder: sharding, a process pool, resuming, face boxes, manifests.

Every ``personalive data prepare`` command lists its clips as :class:`ClipJob` s (where each clip's
frames come from) and hands them to :func:`run_jobs`, which writes, per clip (layout in
``personalive_cli.training.clips``)::

    DST/videos/<id>.mp4    the clip (written to a temporary name, renamed when complete)
    DST/boxes/<id>.npz     its per-frame face / eye / mouth boxes, written after the video

so an existing boxes file means a finished clip. A clip whose video and boxes exist is skipped; a video
without boxes (an interrupted run, a run with ``--no-boxes``) only gets its boxes computed. Boxes are
computed on the output frames as they are encoded (the encoded file differs from them only by
compression), or, for a video already in place, on its decoded frames.

Scale: ``workers`` > 1 runs clips in a process pool (each worker its own FaceMesh); ``shard=(i, n)``
does only the clips whose position in the id-sorted list is ``i`` mod ``n``, so a cluster scheduler can
run ``n`` such processes over one DST. Each run merges its clips into the manifests
(``train_manifest.csv``, and the bench's ``manifest.csv``) under a lock when it ends, also when
interrupted (:mod:`data_tools.dataset_folder`): concurrent shards never lose each other's rows, and
once all shards have ended the manifests list every clip. ``DST/prepare.json`` records the settings
(another run with other settings is refused unless ``force``) and the splits the folder holds.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue as queue_mod
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from data_tools.dataset_folder import (
    BENCH_MANIFEST,
    SETTINGS_FILE,
    ClipRecord,
    claim,
    read_records,
    update_manifests,
)
from personalive_cli.errors import UserError
from personalive_cli.io.outputs import NewFolder, check_output_folder
from personalive_cli.io.video import VideoReader, VideoWriter
from personalive_cli.training.clips import MANIFEST_NAME, SPLITS, ClipBoxes

log = logging.getLogger(__name__)


@dataclass
class PrepareOptions:
    """What to make (``size``, ``fps``, ``crop``, ``max_frames``, ``crf``: the settings ``prepare.json``
    records) and how to run (the rest)."""

    size: int = 512
    fps: float = 25.0
    crop: str = "auto"
    max_frames: int | None = None
    cross: bool = False  # also write cross-reenactment pairs into the bench manifest
    crf: int = 15
    force: bool = False  # redo clips already prepared
    boxes: bool = True  # compute face boxes and the training manifest (needs mediapipe)
    workers: int = 1
    shard: tuple[int, int] = (0, 1)  # (i, n): this run does the clips at sorted positions i mod n
    split: str = "train"
    allow_val_in_train: bool = False

    def settings(self) -> dict:
        return {"size": self.size, "fps": self.fps, "crop": self.crop, "max_frames": self.max_frames,
                "crf": self.crf}

    @property
    def frame_rate(self) -> Fraction:
        return Fraction(self.fps).limit_denominator(1001)

    def validate(self) -> None:
        if self.size < 64 or self.fps <= 0:
            raise UserError("--size must be at least 64 and --fps positive")
        if self.max_frames is not None and self.max_frames < 1:
            raise UserError("--max-frames must be at least 1")
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise UserError(f"--shard must be I/N with 0 <= I < N, got {i}/{n}")
        if self.split not in SPLITS:
            raise UserError(f"--split must be {' or '.join(SPLITS)}, got {self.split!r}")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)``; anything else is one clear error line."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must be I/N (e.g. 0/4: the first of 4 shards), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"--shard must be I/N with 0 <= I < N (shards are numbered from 0), got {text!r}")
    return i, n


@dataclass
class Rendering:
    """A clip's output frames (square, ``size``²), produced lazily."""

    total: int  # how many frames ``frames`` will yield (for progress)
    frames: Iterator[np.ndarray]
    audio_from: Path | None = None  # keep this file's audio, from ``audio_start`` s, cut to the clip
    audio_start: float = 0.0


@dataclass
class ClipJob:
    """One output clip, ``videos/<id>.mp4``. Subclasses say where its frames come from; they are sent to
    worker processes, so they hold only picklable values."""

    id: str
    source: str  # the ``source`` column of the manifests

    def render(self, opts: PrepareOptions) -> Rendering | None:
        """The clip's frames; ``None`` when the clip is the video already in place (boxes only)."""
        return None


@dataclass
class Outcome:
    id: str
    status: str  # done (video + boxes written), boxed (boxes of a video in place), skipped, dropped, failed
    frames: int = 0
    size: int = 0
    fps: float = 0.0
    message: str = ""


class PrepareEvents:
    """Progress callbacks (the CLI draws bars with them); the defaults do nothing."""

    def start(self, clips: int) -> None: ...

    def clip_started(self, clip_id: str, frames: int) -> None: ...

    def frames_done(self, n: int = 1) -> None: ...

    def clip_done(self, outcome: Outcome) -> None: ...


@dataclass
class PrepareResult:
    manifest: Path  # the bench manifest
    train_manifest: Path | None  # None without boxes
    done: list[str] = field(default_factory=list)
    boxed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    clips: int = 0  # clips of this run (its shard)
    frames: int = 0  # frames this run wrote or computed boxes of
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------
# one clip (in this process or in a worker)


def clip_paths(dst: Path, clip_id: str) -> tuple[Path, Path]:
    return dst / "videos" / f"{clip_id}.mp4", dst / "boxes" / f"{clip_id}.npz"


def process_job(job: ClipJob, dst: Path, opts: PrepareOptions, mesh: Callable, events: PrepareEvents) -> Outcome:
    """Make one clip (or only its boxes); every error a clip can cause is its ``failed`` outcome."""
    video, boxes = clip_paths(dst, job.id)
    try:
        rendering = job.render(opts) if (opts.force or not video.is_file()) else None
        if rendering is None:
            return _box_video_in_place(job, video, boxes, mesh(), events)
        return _render(job, rendering, video, boxes, opts, mesh() if opts.boxes else None, events)
    except UserError as exc:
        return Outcome(job.id, "failed", message=str(exc))


def _box_video_in_place(job: ClipJob, video: Path, boxes_path: Path, mesh, events: PrepareEvents) -> Outcome:
    from data_tools.boxes import track_frames

    reader = VideoReader(video, role="clip")
    w, h = reader.info.width, reader.info.height
    if w != h:
        return Outcome(job.id, "failed", message=f"{video} is {w}x{h}, not square: crop it first "
                                                 "(personalive data prepare folder)")
    events.clip_started(job.id, len(reader))
    boxes = track_frames(reader.iter_frames(), mesh, events.frames_done)
    if boxes is None:
        return Outcome(job.id, "dropped", message="no face on the first frame")
    boxes.save(boxes_path)
    return Outcome(job.id, "boxed", frames=len(boxes), size=w, fps=float(reader.info.fps))


def _render(job: ClipJob, r: Rendering, video: Path, boxes_path: Path, opts: PrepareOptions, mesh,
            events: PrepareEvents) -> Outcome:
    from data_tools.boxes import BoxTrack

    events.clip_started(job.id, r.total)
    track = BoxTrack() if mesh is not None else None
    writer = None
    try:
        for frame in r.frames:
            if track is not None and not track.add(mesh.boxes(frame)):
                return Outcome(job.id, "dropped", message="no face on the first frame")
            if writer is None:  # opened at the first kept frame: a dropped clip leaves no file at all
                writer = VideoWriter(video, opts.frame_rate, crf=opts.crf, audio_from=r.audio_from,
                                     audio_start=r.audio_start)
            writer.write(frame)
            events.frames_done(1)
        if writer is None:
            return Outcome(job.id, "failed", message="no frames to write")
        n, finishing, writer = writer.frames, writer, None
        finishing.close()
    finally:
        if writer is not None:
            writer.abort()
        r.frames.close()
    if track is not None:  # after the video: an existing boxes file means a finished clip
        track.result().save(boxes_path)
    return Outcome(job.id, "done", frames=n, size=opts.size, fps=float(opts.frame_rate))


class _LazyMesh:
    """One FaceMesh per process, made when the first clip needs it."""

    def __init__(self) -> None:
        self._mesh = None

    def __call__(self):
        if self._mesh is None:
            from personalive_cli.faces.mesh import FaceMesh

            self._mesh = FaceMesh()
        return self._mesh

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None


# worker-process state (each has its own FaceMesh, the queue back to the parent and the stop flag)
_worker: dict = {}


class _Stopped(Exception):
    """The parent asked the workers to stop (it was interrupted)."""


def _init_worker(events_queue, stop) -> None:
    # Ctrl-C reaches the whole process group: the parent alone decides, and sets `stop`, which the
    # workers check at every frame (an interrupt landing in a worker between clips would kill it)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker.update(queue=events_queue, stop=stop, mesh=_LazyMesh())


class _QueueEvents(PrepareEvents):
    """A worker's progress, sent to the parent in batches of at most a tenth of a second."""

    def __init__(self, q, stop) -> None:
        self.q, self.stop, self.pending, self.last = q, stop, 0, time.monotonic()

    def clip_started(self, clip_id: str, frames: int) -> None:
        self.q.put(("start", clip_id, frames))

    def frames_done(self, n: int = 1) -> None:
        if self.stop.is_set():
            raise _Stopped
        self.pending += n
        if time.monotonic() - self.last > 0.1:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.q.put(("frames", self.pending))
        self.pending, self.last = 0, time.monotonic()


def _work(job: ClipJob, dst: Path, opts: PrepareOptions) -> Outcome:
    if _worker["stop"].is_set():
        return Outcome(job.id, "failed", message="interrupted")
    events = _QueueEvents(_worker["queue"], _worker["stop"])
    try:
        return process_job(job, dst, opts, _worker["mesh"], events)
    except _Stopped:  # its files were removed on the way out
        return Outcome(job.id, "failed", message="interrupted")
    finally:
        events.flush()


def _preload_mediapipe() -> list[str]:
    import importlib.util

    return ["mediapipe.python.solutions.face_mesh"] if importlib.util.find_spec("mediapipe") else []


def _drain(q, events: PrepareEvents) -> None:
    while True:
        try:
            msg = q.get_nowait()
        except queue_mod.Empty:
            return
        if msg[0] == "start":
            events.clip_started(msg[1], msg[2])
        else:
            events.frames_done(msg[1])


def _execute(jobs: list[ClipJob], dst: Path, opts: PrepareOptions, events: PrepareEvents) -> Iterator[Outcome]:
    if opts.workers == 1 or len(jobs) <= 1:
        mesh = _LazyMesh()
        try:
            for job in jobs:
                yield process_job(job, dst, opts, mesh, events)
        finally:
            mesh.close()
        return
    # forkserver, not fork: the parent may run mediapipe and rich threads, which a forked child would
    # inherit in whatever state they were. The server (a fresh, single-threaded process) imports the
    # heavy modules once (mediapipe's take seconds) and forks every worker from there.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["data_tools.runner", "personalive_cli.faces.mesh", *_preload_mediapipe()])
    q, stop = ctx.Queue(), ctx.Event()
    todo = iter(jobs)
    pending: dict = {}
    with ProcessPoolExecutor(min(opts.workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                             initargs=(q, stop)) as pool:

        def submit_next() -> None:
            job = next(todo, None)
            if job is not None:
                pending[pool.submit(_work, job, dst, opts)] = job

        for _ in range(2 * opts.workers):  # a short queue: hundreds of thousands of clips need no futures
            submit_next()
        try:
            while pending:
                finished, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(q, events)
                for fut in finished:
                    job = pending.pop(fut)
                    try:
                        outcome = fut.result()
                    except BrokenProcessPool:
                        raise UserError(f"a worker process died while preparing {job.id} (out of memory?); "
                                        "run the command again to resume") from None
                    yield outcome
                    submit_next()
            _drain(q, events)
        except BaseException:
            stop.set()  # running clips end at their next frame, removing their partial files
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _record_in_place(dst: Path, job: ClipJob, opts: PrepareOptions, known: ClipRecord | None) -> ClipRecord | None:
    """The manifest row of a clip this run skipped: what the manifests said, else read from its files."""
    video, boxes = clip_paths(dst, job.id)
    has_boxes = opts.boxes and boxes.is_file()
    if known is not None and known.size and (known.boxes or not has_boxes):
        return known
    try:
        reader = VideoReader(video, role="clip")
        frames = len(ClipBoxes.load(boxes)) if has_boxes else len(reader)
    except UserError as exc:
        log.warning("%s left out of the manifests: %s", job.id, exc)
        return None
    return ClipRecord(job.id, video.relative_to(dst).as_posix(), boxes.relative_to(dst).as_posix() if has_boxes else "",
                   frames, reader.info.width, float(reader.info.fps), known.split if known and known.split
                   else opts.split, known.source if known and known.source else job.source)


def _finished(dst: Path, clip_id: str, opts: PrepareOptions) -> bool:
    video, boxes = clip_paths(dst, clip_id)
    return video.is_file() and (boxes.is_file() or not opts.boxes)


def _holds_clips(dst: Path) -> bool:
    return (dst / "videos").is_dir() and any(p.suffix == ".mp4" and not p.name.startswith(".")
                                            for p in (dst / "videos").iterdir())


# ---------------------------------------------------------------------------------------------------


def run_jobs(dst: str | Path, jobs: list[ClipJob], opts: PrepareOptions, events: PrepareEvents | None = None,
             settings: dict | None = None) -> PrepareResult:
    """Prepare this run's share of ``jobs`` (see the module docstring) into ``dst``. ``settings``: what
    ``prepare.json`` must match (None: clips already in place, see ``prepare boxes``)."""
    dst = Path(dst)
    events = events or PrepareEvents()
    opts.validate()
    if opts.boxes:
        from personalive_cli.extras import require_extra

        require_extra("train", "personalive data prepare (for the face boxes; bench clips alone: --no-boxes)",
                      modules=("mediapipe",))
    i, n = opts.shard
    mine = sorted(jobs, key=lambda j: j.id)[i::n]
    result = PrepareResult(manifest=dst / BENCH_MANIFEST, train_manifest=dst / MANIFEST_NAME if opts.boxes else None,
                           clips=len(mine))
    if not mine:
        if n > 1:
            log.info("nothing to do: shard %d/%d holds none of the %d clip(s)", i, n, len(jobs))
        return result
    check_output_folder(dst)
    with NewFolder(dst, scaffolding=[SETTINGS_FILE]):
        fresh = claim(dst, settings, opts.split, opts.force, opts.allow_val_in_train)
        try:
            with NewFolder(dst / "videos"), NewFolder(dst / "boxes") if opts.boxes else contextlib.nullcontext():
                _run(dst, mine, opts, events, result)
        except BaseException:
            if fresh and not _holds_clips(dst):  # the settings of a run that made nothing are not kept
                (dst / SETTINGS_FILE).unlink(missing_ok=True)
            raise
    return result


def _run(dst: Path, mine: list[ClipJob], opts: PrepareOptions, events: PrepareEvents, result: PrepareResult) -> None:
    known = read_records(dst)
    todo, skipped = [], []
    for job in mine:
        (skipped if _finished(dst, job.id, opts) and not opts.force else todo).append(job)
    events.start(len(mine))
    records: dict[str, ClipRecord] = {}
    by_id = {job.id: job for job in todo}
    t0 = time.monotonic()
    try:
        for job in skipped:
            result.skipped.append(job.id)
            events.clip_done(Outcome(job.id, "skipped"))
        for out in _execute(todo, dst, opts, events):
            if out.status in ("done", "boxed"):
                getattr(result, out.status).append(out.id)
                result.frames += out.frames
                video, boxes = clip_paths(dst, out.id)
                records[out.id] = ClipRecord(out.id, video.relative_to(dst).as_posix(),
                                          boxes.relative_to(dst).as_posix() if opts.boxes else "", out.frames,
                                          out.size, out.fps, opts.split, by_id[out.id].source)
            elif out.status == "dropped":
                result.dropped.append(out.id)
            else:
                result.failed[out.id] = out.message
            events.clip_done(out)
    finally:
        result.seconds = time.monotonic() - t0
        # clips finished before this run, and (after an interruption) any a worker finished unreported
        for job in skipped + [j for j in todo if j.id not in records and _finished(dst, j.id, opts)]:
            rec = _record_in_place(dst, job, opts, known.get(job.id))
            if rec is not None:
                records[job.id] = rec
        if records:
            update_manifests(dst, records, opts.cross)
    if not (result.done or result.boxed or result.skipped):
        raise UserError(f"no video could be prepared: {_why_none(result)}")


def _why_none(result: PrepareResult) -> str:
    parts = []
    if result.dropped:
        more = ", ..." if len(result.dropped) > 3 else ""
        parts.append(f"{len(result.dropped)} without a face on the first frame ({', '.join(result.dropped[:3])}{more})")
    parts += [f"{k}: {v}" for k, v in list(result.failed.items())[:3]]
    if len(result.failed) > 3:
        parts.append(f"and {len(result.failed) - 3} more failed")
    return "; ".join(parts)
