"""Rich output on stderr: stdout is reserved for data (``stream``) and ``--json``."""

from __future__ import annotations

import functools

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from personalive_cli.errors import UserError

err = Console(stderr=True)


def frame_progress() -> Progress:
    """A progress bar with frames done / total, frames per second and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("[cyan]{task.fields[fps]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=True,  # an error leaves exactly one line behind, not a half-drawn bar
    )


def fps_text(task) -> str:
    return f"{task.speed:.2f} fps" if task.speed else "-- fps"


def handle_errors(fn):
    """Turn a :class:`UserError` into one red line on stderr and exit status 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper
