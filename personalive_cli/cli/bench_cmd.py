"""``personalive bench``: quality and speed of any registered method, beside the paper's Table 1."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personalive_cli.cli.console import err, handle_errors

bench_app = typer.Typer(no_args_is_help=False, invoke_without_command=True,
                        help="Benchmark methods: quality (LPIPS, tLP, ID-SIM, FVD, FID) and speed (FPS, latency).")


class RichProgress:
    """The runner's progress callbacks as rich bars on stderr."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("[cyan]{task.fields[info]}"), TimeElapsedColumn(), console=err, transient=True)
        self.tasks: dict[str, int] = {}
        self.started = False

    def start(self, label, total):
        if not self.started:
            self.p.start()
            self.started = True
        self.tasks[label] = self.p.add_task(label, total=total, info="")

    def advance(self, label, n=1, info=""):
        self.p.update(self.tasks[label], advance=n, info=info)

    def log(self, text):
        self.p.console.print(text)

    def stop(self):
        if self.started:
            self.p.stop()


def _show(df, notes, paths, as_json: bool) -> None:
    from rich.console import Console

    from benchmarks.report import grouped_notes, rich_tables

    # a log or pipe has no width: do not squeeze the tables into 80 columns there
    out = err if err.is_terminal else Console(stderr=True, width=max(err.width, 130))
    for t in rich_tables(df, notes):
        out.print(t, highlight=False)
    for cols, why in grouped_notes(notes):
        err.print(f"[yellow]n/a* {', '.join(cols)}:[/] {why}", highlight=False, soft_wrap=True)
    err.print("† (dim rows): the paper's published numbers (PersonaLive Tab. 1), not measured here")
    err.print("wrote " + ", ".join(str(p) for p in paths.values()))
    if as_json:
        print(paths["json"].read_text())


@bench_app.callback()
@handle_errors
def bench_cmd(
    ctx: typer.Context,
    methods: Annotated[str, typer.Option(help="comma-separated method names, or all")] = "all",
    dataset: Annotated[str | None, typer.Option(help="folder of videos, a prepared folder with manifest.csv, "
                                                     "or a .csv/.json manifest")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="results folder (resumable cache inside)")] = Path("bench_results"),
    size: Annotated[int, typer.Option(help="working resolution (square)")] = 512,
    device: Annotated[str, typer.Option(help="auto|cpu|cuda|mps")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto|fp32|fp16|bf16")] = "auto",
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="method weights folder")] = None,
    frames: Annotated[int | None, typer.Option(help="use the first N frames of each video")] = None,
    max_videos: Annotated[int | None, typer.Option(help="use the first N dataset entries")] = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated quality columns (default: all)")] = None,
    metrics_weights: Annotated[str | None, typer.Option(help="folder holding the metrics' network files")] = None,
    strict: Annotated[bool, typer.Option(help="fail when a metric's network is absent")] = False,
    quality: Annotated[bool, typer.Option("--quality/--no-quality", help="quality metrics on --dataset")] = True,
    speed: Annotated[bool, typer.Option("--speed", help="also measure speed (FPS, latency, memory, FLOPs)")] = False,
    random_weights: Annotated[bool, typer.Option("--random-weights",
                              help="speed: build methods that need weights with random ones (same architecture)")] = False,
    warmup: Annotated[int, typer.Option(help="speed: warm-up steps")] = 3,
    steps: Annotated[int, typer.Option(help="speed: timed steps (real-time paced)")] = 20,
    pace_fps: Annotated[float | None, typer.Option(help="speed: arrival rate of the paced run (default: the video's fps, else 25)")] = None,
    budget: Annotated[float | None, typer.Option(help="speed: stop a phase early after this many seconds (min 3 timed steps)")] = None,
    configs: Annotated[str | None, typer.Option(help="speed configurations of each method that takes --compile: all, or "
                                              "e.g. 'eager,compile+graphs+tiny+fp16' (benchmarks/configs.py)")] = None,
    tlp_cross: Annotated[str, typer.Option("--tlp-cross", help="cross-reenactment tLP target: driving (the "
                                            "driving video's motion) or none (reference-free)")] = "driving",
    fresh: Annotated[bool, typer.Option(help="ignore cached per-video results")] = False,
    shard: Annotated[str | None, typer.Option(help="i/n: do shard i of n (default: from accelerate launch / torchrun)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON on stdout")] = False,
) -> None:
    """Run the bench: `personalive bench --methods all --dataset DIR [--speed]`. `bench merge DIR` merges shards."""
    if ctx.invoked_subcommand is not None:
        return
    from personalive_cli.extras import require_extra

    require_extra("bench", "personalive bench")
    from benchmarks.report import merge, write_outputs
    from benchmarks.runner import (
        BenchConfig,
        detect_shard,
        parse_shard,
        run_shard,
        shards_finished,
        wait_for_shards,
    )

    manual = parse_shard(shard)
    shard_ix = manual or detect_shard()
    cfg = BenchConfig(methods=[m for m in methods.split(",")], dataset=dataset, output=str(output), size=size,
                      device=device, dtype=dtype, seed=seed, weights=weights, frames=frames, max_videos=max_videos,
                      metrics=[m.strip() for m in metrics.split(",")] if metrics else None,
                      metrics_weights=metrics_weights, strict=strict, quality=quality, speed=speed,
                      random_weights=random_weights, warmup=warmup, steps=steps, speed_fps=pace_fps,
                      budget_s=budget, fresh=fresh, shard=shard_ix, tlp_cross=tlp_cross, configs=configs)
    progress = RichProgress()
    try:
        run_shard(cfg, progress)
    finally:
        progress.stop()
    index, count = shard_ix
    if count > 1:
        if manual:  # independent jobs: whoever finishes last merges
            if len(shards_finished(output, count)) < count:  # only this run's markers count
                err.print(f"shard {index}/{count} done; when every shard is done: personalive bench merge {output}")
                return
        elif index != 0:
            err.print(f"shard {index}/{count} done; shard 0 merges (or: personalive bench merge {output})")
            return
        else:  # accelerate launch / torchrun: shard 0 waits for the others
            err.print(f"shard 0/{count} done; waiting for the other shards")
            wait_for_shards(output, count)
    df, notes = merge(output)
    paths = write_outputs(df, notes, output)
    _show(df, notes, paths, as_json)


@bench_app.command("merge")
@handle_errors
def merge_cmd(
    output: Annotated[Path, typer.Argument(help="the bench output folder the shards wrote into")],
    partial: Annotated[bool, typer.Option(help="merge even when some videos or speed rows are missing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON on stdout")] = False,
) -> None:
    """Merge the shards' per-video results and speed rows in OUTPUT into one table."""
    from personalive_cli.extras import require_extra

    require_extra("bench", "personalive bench merge")
    from benchmarks.report import merge, write_outputs

    df, notes = merge(output, partial=partial)
    paths = write_outputs(df, notes, output)
    _show(df, notes, paths, as_json)


def mount(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")

