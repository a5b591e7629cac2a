"""``personalive weights``: download, check and make-tiny for any method that has weights.

Generated from the methods' weights hooks (``Method.download_weights``, ``check_weights``,
``make_tiny_weights``): no method is named here. ``--method`` picks one (default: personalive). The
older spelling ``personalive weights check liveportrait DIR`` (a method name before the folder) is
still understood.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from personalive_cli import registry
from personalive_cli.cli.console import err, handle_errors
from personalive_cli.errors import UserError

weights_app = typer.Typer(no_args_is_help=True, help="Download, check and make tiny weights for a method "
                                                     "(`--method`, default personalive).")

MethodName = Annotated[str, typer.Option("--method", "-m", help="the method whose weights (see `personalive methods`)")]
DEFAULT_METHOD = "personalive"


def _with_weights(method: str) -> type[registry.Method]:
    cls = registry.get(method)
    if not cls.has_weights:
        which = ", ".join(n for n, c in registry.available().items() if c.has_weights)
        raise UserError(f"method {method!r} has no weights of its own (methods with weights: {which})")
    return cls


def _method_and_folder(method: str, first: str | None, second: Path | None) -> tuple[type[registry.Method], Path | None]:
    """``[METHOD] DIR`` (the older positional form) or ``DIR`` with ``--method``."""
    if first is not None and second is not None:
        if first not in registry.available():
            raise UserError(f"unexpected extra argument {second} (give one folder; pick the method with --method)")
        return _with_weights(first), second
    return _with_weights(method), Path(first) if first is not None else None


@weights_app.command("download")
@handle_errors
def download_cmd(
    root: Annotated[str | None, typer.Argument(help="target folder (official layout); default: the Hugging Face "
                                               "cache, where every command finds it without --weights",
                                               metavar="[DIR]", show_default=False)] = None,
    target: Annotated[Path | None, typer.Argument(hidden=True, show_default=False)] = None,
    method: MethodName = DEFAULT_METHOD,
    extras: Annotated[list[str] | None, typer.Option("--with", help="an optional part too, e.g. taesd (the tiny "
                                                     "VAE of PersonaLive's --vae tiny); repeatable")] = None,
    taesd: Annotated[bool, typer.Option("--taesd", hidden=True, help="same as --with taesd")] = False,
) -> None:
    """Fetch a method's release from the Hugging Face hub (resumable)."""
    cls, folder = _method_and_folder(method, root, target)
    wanted = tuple(extras or ()) + (("taesd",) if taesd else ())
    unknown = [e for e in wanted if e not in cls.download_extras]
    if unknown:
        raise UserError(f"method {cls.name!r} has no optional part {unknown[0]!r} "
                        f"(its parts: {', '.join(cls.download_extras) or 'none'})")
    if folder is not None:
        from personalive_cli.io.outputs import check_output_folder

        check_output_folder(folder)
    elif not cls.downloads_to_cache:
        raise UserError(f"method {cls.name!r} downloads into a folder: personalive weights download --method "
                        f"{cls.name} DIR")
    err.print(f"downloading {cls.name} weights into {folder or 'the Hugging Face cache'}", highlight=False)
    cls.download_weights(folder, extras=wanted)
    if folder is None:
        err.print(f"done; `--method {cls.name}` finds them without --weights", highlight=False)
    else:
        env = f" (or export {cls.weights_env}={folder})" if cls.weights_env else ""
        err.print(f"done; use them with --method {cls.name} --weights {folder}{env}", highlight=False, soft_wrap=True)


@weights_app.command("check")
@handle_errors
def check_cmd(
    root: Annotated[str, typer.Argument(help="weights folder to check", metavar="DIR")],
    target: Annotated[Path | None, typer.Argument(hidden=True, show_default=False)] = None,
    method: MethodName = DEFAULT_METHOD,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")] = False,
) -> None:
    """Report, file by file, what is present, missing, and whether keys and shapes match."""
    cls, folder = _method_and_folder(method, root, target)
    if not folder.is_dir():
        raise UserError(f"weights folder not found: {folder}")
    with err.status("checking keys and shapes..."):
        rows = cls.check_weights(folder)
    bad = [r for r in rows if r["status"] not in ("ok", "optional")]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title=f"{cls.name} weights in {folder}")
        for col in ("file", "status", "detail"):
            table.add_column(col, overflow="fold")
        colours = {"ok": "green", "optional": "dim", "missing": "red", "bad": "red", "mismatch": "red"}
        for r in rows:
            table.add_row(escape(r["file"]), f"[{colours[r['status']]}]{r['status']}", escape(r["detail"]))
        err.print(table)
    if bad:
        raise UserError(f"{len(bad)} problem(s) in {folder}: first: {bad[0]['file']}: {bad[0]['detail']}")


@weights_app.command("make-tiny")
@handle_errors
def make_tiny_cmd(
    root: Annotated[str, typer.Argument(help="folder to write", metavar="DIR")],
    target: Annotated[Path | None, typer.Argument(hidden=True, show_default=False)] = None,
    method: MethodName = DEFAULT_METHOD,
    seed: Annotated[int, typer.Option(help="seed of the random weights")] = 0,
) -> None:
    """Write a tiny random-weight model (same architecture, few channels) in the release layout.

    Its output is noise-like: it exists to try the whole pipeline without a download, and for tests."""
    from personalive_cli.io.outputs import check_output_folder

    cls, folder = _method_and_folder(method, root, target)
    check_output_folder(folder)
    cls.make_tiny_weights(folder, seed=seed)
    err.print(f"wrote a tiny random-weight {cls.name} to {folder}", highlight=False)


def mount(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")
