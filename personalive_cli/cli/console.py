"""Rich output on stderr: stdout is reserved for data (``stream``) and ``--json``."""

from __future__ import annotations

import functools
import logging

import typer
from rich.console import Console
from rich.markup import escape
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

LIBRARY_LOGGERS = ("personalive_cli", "baselines", "benchmarks", "data_tools")


class ConsoleLogHandler(logging.Handler):
    """Library code logs with ``logging``; the CLI shows its records here, one line each on stderr:
    ``warning: ...`` for warnings, the bare message for information."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not end the run
            text = str(record.msg)
        if record.levelno >= logging.ERROR:
            err.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
        elif record.levelno >= logging.WARNING:
            err.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)
        else:
            err.print(escape(text), highlight=False, soft_wrap=True)


def setup_logging(level: int = logging.INFO) -> None:
    """Route the library's log records to :class:`ConsoleLogHandler` (idempotent)."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = False
        if not any(isinstance(h, ConsoleLogHandler) for h in logger.handlers):
            logger.addHandler(ConsoleLogHandler())


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


def advance_with_fps(progress: Progress, task_id) -> None:
    """Advance one frame bar and refresh its fps field. Tasks are looked up by id: ``progress.tasks``
    is a list, whose positions shift once a finished task is removed."""
    progress.advance(task_id)
    task = next(t for t in progress.tasks if t.id == task_id)
    progress.update(task_id, fps=fps_text(task))


def handle_errors(fn):
    """Turn a :class:`UserError` into one red line on stderr and exit status 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise
        except OSError as exc:
            # the environment, not the code: a full disk, a permission changed mid-run, a device gone
            where = f" ({exc.filename})" if exc.filename else ""
            err.print(f"[bold red]error:[/] {escape(exc.strerror or str(exc))}{escape(where)}", highlight=False,
                      soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper
