"""``personalive data ...``: dataset preparation commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from personalive_cli.cli.console import err, fps_text, frame_progress, handle_errors

data_app = typer.Typer(no_args_is_help=True, help="Prepare datasets for the bench and for training.")
prepare_app = typer.Typer(no_args_is_help=True, help="Turn raw videos into face-centred square clips at a fixed fps, "
                          "with the per-frame face boxes and manifests training and the bench read.")
data_app.add_typer(prepare_app, name="prepare")

# options every prepare command shares
Workers = Annotated[int, typer.Option(help="clips prepared at once, each in its own process")]
Shard = Annotated[str, typer.Option(help="I/N: do only the clips at sorted positions I mod N (run N such "
                                         "processes, e.g. on a cluster, into one DST)")]
Force = Annotated[bool, typer.Option(help="redo clips already prepared")]
AllowVal = Annotated[bool, typer.Option("--allow-val-in-train",
                                        help="allow val (evaluation) and training clips in one folder")]
Size = Annotated[int, typer.Option(help="square clip size")]
Fps = Annotated[float, typer.Option(help="output frame rate")]
MaxFrames = Annotated[int | None, typer.Option(help="keep only the first N output frames of each clip")]
Cross = Annotated[bool, typer.Option("--cross/--no-cross",
                                     help="also add cross-reenactment pairs (video i driven with video i+1's first "
                                          "frame) to the bench manifest")]
Boxes = Annotated[bool, typer.Option("--boxes/--no-boxes",
                                     help="compute per-frame face boxes and train_manifest.csv (needs the train "
                                          "extra); --no-boxes: bench clips only")]


class _Bars:
    """Rich progress of a prepare run: clips, and frames with their rate (all workers together)."""

    def __init__(self) -> None:
        self.progress = frame_progress()
        self.clips = self.frames = None

    def start(self, clips: int) -> None:
        self.progress.start()
        self.clips = self.progress.add_task("clips", total=clips, fps="")
        self.frames = self.progress.add_task("frames", total=0, fps="-- fps")

    def clip_started(self, clip_id: str, frames: int) -> None:
        task = self._task(self.frames)
        self.progress.update(self.frames, total=(task.total or 0) + frames)

    def frames_done(self, n: int = 1) -> None:
        self.progress.advance(self.frames, n)
        self.progress.update(self.frames, fps=fps_text(self._task(self.frames)))

    def clip_done(self, outcome) -> None:
        self.progress.advance(self.clips)

    def _task(self, task_id):
        return next(t for t in self.progress.tasks if t.id == task_id)

    def stop(self) -> None:
        self.progress.stop()


def _run(fn, *args, **kwargs):
    bars = _Bars()
    try:
        return fn(*args, events=bars, **kwargs)
    finally:
        bars.stop()


def _options(**kw):
    from data_tools.runner import PrepareOptions, parse_shard

    kw["shard"] = parse_shard(kw["shard"])
    return PrepareOptions(**kw)


def _report(result, what: str = "video") -> None:
    shown = list(result.failed.items())
    for vid, why in shown[:20]:
        err.print(f"[yellow]skipped {escape(vid)}:[/] {escape(why)}", highlight=False)
    if len(shown) > 20:
        err.print(f"[yellow]... and {len(shown) - 20} more failed[/]")
    if result.dropped:
        more = ", ..." if len(result.dropped) > 5 else ""
        err.print(f"[yellow]dropped (no face on the first frame):[/] {escape(', '.join(result.dropped[:5]))}{more}",
                  highlight=False)
    if what == "boxes":
        line = f"computed the boxes of {len(result.boxed)} clip(s)"
    else:
        line = f"prepared {len(result.done)} {what}(s)"
    line += f", {len(result.skipped)} already done, {len(result.failed)} failed"
    if result.boxed and what != "boxes":
        line += f", boxes added to {len(result.boxed)} video(s) already there"
    if result.dropped:
        line += f", {len(result.dropped)} dropped (no face on the first frame)"
    if result.frames and result.seconds > 0:
        line += f"; {result.frames} frames in {result.seconds:.1f} s ({result.frames / result.seconds:.1f} frames/s)"
    manifests = [p for p in (result.train_manifest, result.manifest) if p is not None and p.is_file()]
    if manifests:
        line += f"; manifests: {', '.join(str(p) for p in manifests)}"
    err.print(escape(line), highlight=False, soft_wrap=True)


@prepare_app.command("folder")
@handle_errors
def prepare_folder_cmd(
    src: Annotated[Path, typer.Argument(help="folder of raw videos (searched recursively; a folder holding "
                                             "videos/*.mp4 takes its ids from there)")],
    dst: Annotated[Path, typer.Argument(help="output folder: videos/, boxes/, train_manifest.csv, manifest.csv, "
                                             "prepare.json")],
    size: Size = 512,
    fps: Fps = 25.0,
    crop: Annotated[str, typer.Option(help="auto: face-centred square crops; none: resize whole frames (for "
                                           "clips already cropped to squares, e.g. VFHQ)")] = "auto",
    max_frames: MaxFrames = None,
    cross: Cross = False,
    boxes: Boxes = True,
    workers: Workers = 1,
    shard: Shard = "0/1",
    force: Force = False,
    allow_val_in_train: AllowVal = False,
) -> None:
    """Prepare every video under SRC into DST (resumable: finished clips are skipped).

    Clips whose first frame shows no face are dropped. Shards may run at once into one DST: each merges
    its clips into the manifests under a lock when it ends, so once all have ended the manifests list
    every clip."""
    from data_tools.prepare import prepare_folder

    opts = _options(size=size, fps=fps, crop=crop, max_frames=max_frames, cross=cross, boxes=boxes,
                    workers=workers, shard=shard, force=force, allow_val_in_train=allow_val_in_train)
    _report(_run(prepare_folder, src, dst, opts))


@prepare_app.command("talkinghead-1kh")
@handle_errors
def prepare_talkinghead_cmd(
    tubes: Annotated[Path, typer.Argument(help="a TalkingHead-1KH tube file ({train,small,val}_video_tubes.txt: "
                                               "name,H,W,S,E,L,T,R,B per line)")],
    raw: Annotated[Path, typer.Argument(help="folder of the 1-minute raw segments, RAW/<ytid>_NNNN.mp4")],
    dst: Annotated[Path, typer.Argument(help="output folder (as for `prepare folder`) plus missing_videos.txt")],
    size: Size = 512,
    fps: Fps = 25.0,
    max_frames: MaxFrames = None,
    split: Annotated[str | None, typer.Option(help="train or val (default: from the tube file's name; val is the "
                                                   "official evaluation set)")] = None,
    cross: Cross = False,
    workers: Workers = 1,
    shard: Shard = "0/1",
    force: Force = False,
    allow_val_in_train: AllowVal = False,
) -> None:
    """Crop TalkingHead-1KH tubes out of their raw videos: frames S..E, box L,T,R,B rescaled from HxW to
    the video's real size, resized to SIZE², resampled to FPS; then boxes and manifests as `prepare folder`.

    Nothing is downloaded: the YouTube ids of missing raw videos go to DST/missing_videos.txt. Fetch them
    as the official scripts do (yt-dlp in place of pytube), then run this again (finished clips are
    skipped):

      yt-dlp -f 'bv*[ext=mp4]' -o 'downloads/%(id)s.mp4' -a DST/missing_videos.txt

      for f in downloads/*.mp4; do n=$(basename "$f" .mp4); ffmpeg -i "$f" -c copy -map 0
      -segment_time 00:01:00 -f segment "RAW/${n}_%04d.mp4"; done
    """
    from data_tools.talkinghead import fetch_hint, prepare_talkinghead

    opts = _options(size=size, fps=fps, max_frames=max_frames, cross=cross, workers=workers, shard=shard,
                    force=force, allow_val_in_train=allow_val_in_train)
    result = _run(prepare_talkinghead, tubes, raw, dst, opts, split=split)
    if result.missing:
        examples = ", ".join(f"{m}.mp4" for m in result.missing[:3]) + (", ..." if len(result.missing) > 3 else "")
        err.print(f"[yellow]warning:[/] {len(result.missing)} raw video(s) named in {escape(tubes.name)} are not in "
                  f"{escape(str(raw))} (e.g. {escape(examples)}); their {len(result.missing_ids)} YouTube id(s) "
                  f"are in {escape(str(result.missing_file))}; "
                  f"{escape(fetch_hint(result.missing_file, raw))}", highlight=False, soft_wrap=True)
    _report(result, what=f"{result.split} clip")


@prepare_app.command("boxes")
@handle_errors
def prepare_boxes_cmd(
    data: Annotated[Path, typer.Argument(help="a folder of square clips, DATA/videos/<id>.mp4 (e.g. VFHQ at 512² "
                                              "and 25 fps)")],
    split: Annotated[str, typer.Option(help="train or val: the split of clips new to the manifest")] = "train",
    workers: Workers = 1,
    shard: Shard = "0/1",
    force: Force = False,
    allow_val_in_train: AllowVal = False,
) -> None:
    """Compute the per-frame face boxes (DATA/boxes/<id>.npz) and the manifests of clips already in place,
    without re-encoding them (resumable: clips with boxes are skipped)."""
    from data_tools.prepare import prepare_boxes

    opts = _options(split=split, workers=workers, shard=shard, force=force, allow_val_in_train=allow_val_in_train)
    _report(_run(prepare_boxes, data, opts), what="boxes")


def mount(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
