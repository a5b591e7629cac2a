"""``personalive data ...``: dataset preparation commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personalive_cli.cli.console import advance_with_fps, err, frame_progress, handle_errors

data_app = typer.Typer(no_args_is_help=True, help="Prepare datasets for the bench (and training).")
prepare_app = typer.Typer(no_args_is_help=True, help="Turn raw videos into face-centred square crops at a fixed fps.")
data_app.add_typer(prepare_app, name="prepare")


@prepare_app.command("folder")
@handle_errors
def prepare_folder_cmd(
    src: Annotated[Path, typer.Argument(help="folder of raw videos (searched recursively)")],
    dst: Annotated[Path, typer.Argument(help="output folder: videos/, manifest.csv, prepare.json")],
    size: Annotated[int, typer.Option(help="square crop size")] = 512,
    fps: Annotated[float, typer.Option(help="output frame rate")] = 25.0,
    crop: Annotated[str, typer.Option(help="auto: face-centred square crops; none: resize whole frames")] = "auto",
    max_frames: Annotated[int | None, typer.Option(help="keep only the first N output frames of each video")] = None,
    cross: Annotated[bool, typer.Option("--cross/--no-cross",
                     help="also add cross-reenactment pairs (video i driven with video i+1's first frame)")] = False,
    force: Annotated[bool, typer.Option(help="redo videos already prepared")] = False,
) -> None:
    """Prepare every video under SRC into DST (resumable: finished videos are skipped)."""
    from data_tools.prepare import PrepareOptions, prepare_folder

    opts = PrepareOptions(size=size, fps=fps, crop=crop, max_frames=max_frames, cross=cross, force=force)
    progress = frame_progress()
    state: dict = {}

    def on_start(n_videos):
        progress.start()
        state["videos"] = progress.add_task("videos", total=n_videos, fps="")

    def on_video(vid, total):
        if "frames" in state:
            progress.remove_task(state.pop("frames"))
        progress.advance(state["videos"])
        if total:
            state["frames"] = progress.add_task(vid[:40], total=total, fps="-- fps")

    def on_frame():
        if "frames" in state:
            advance_with_fps(progress, state["frames"])

    try:
        result = prepare_folder(src, dst, opts, on_start=on_start, on_video=on_video, on_frame=on_frame)
    finally:
        progress.stop()
    for vid, why in result.failed.items():
        err.print(f"[yellow]skipped {vid}:[/] {why}", highlight=False)
    err.print(f"prepared {len(result.done)} video(s), {len(result.skipped)} already done, "
              f"{len(result.failed)} failed; manifest: {result.manifest}")


def mount(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
