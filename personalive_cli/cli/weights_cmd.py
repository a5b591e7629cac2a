"""``personalive weights``: download the release, check a weights folder, write the tiny test model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from personalive_cli.cli.console import err, handle_errors

weights_app = typer.Typer(no_args_is_help=True, help="Download and check PersonaLive weights.")


@weights_app.command("download")
@handle_errors
def download_cmd(
    root: Annotated[Path, typer.Argument(help="target folder (official layout)")] = Path("pretrained_weights"),
    taesd: Annotated[bool, typer.Option("--taesd", help="also fetch the tiny VAE decoder (for --vae tiny)")] = False,
) -> None:
    """Fetch the PersonaLive release and its base models from the Hugging Face hub (resumable)."""
    from personalive_cli.weights import HUB_REPOS, download

    err.print(f"downloading {', '.join(HUB_REPOS[k] for k in HUB_REPOS if k != 'taesd' or taesd)} into {root}")
    download(root, include_taesd=taesd)
    err.print(f"done; use it with --weights {root} (or export PERSONALIVE_WEIGHTS={root})")


@weights_app.command("check")
@handle_errors
def check_cmd(
    root: Annotated[Path, typer.Argument(help="weights folder to check")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")] = False,
) -> None:
    """Report, file by file, what is present, missing, and whether keys and shapes match."""
    from personalive_cli.errors import UserError
    from personalive_cli.pipeline.components import check_layout

    if not root.is_dir():
        raise UserError(f"weights folder not found: {root}")
    with err.status("checking keys and shapes..."):
        rows = check_layout(root)
    bad = [r for r in rows if r["status"] not in ("ok", "optional")]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title=f"weights in {root}")
        for col in ("file", "status", "detail"):
            table.add_column(col, overflow="fold")
        colours = {"ok": "green", "optional": "dim", "missing": "red", "bad": "red", "mismatch": "red"}
        for r in rows:
            table.add_row(r["file"], f"[{colours[r['status']]}]{r['status']}", r["detail"])
        err.print(table)
    if bad:
        raise UserError(f"{len(bad)} problem(s) in {root}: first: {bad[0]['file']}: {bad[0]['detail']}")


@weights_app.command("make-tiny")
@handle_errors
def make_tiny_cmd(
    root: Annotated[Path, typer.Argument(help="folder to write")],
    seed: Annotated[int, typer.Option(help="seed of the random weights")] = 0,
) -> None:
    """Write a tiny random-weight PersonaLive (same architecture, few channels) in the official layout.

    Its output is noise-like: it exists to try the whole pipeline without a download, and for tests."""
    from personalive_cli.pipeline.components import PersonaLiveConfig, PersonaLiveModels

    PersonaLiveModels.random(PersonaLiveConfig.tiny(), seed=seed).save_pretrained(root)
    err.print(f"wrote a tiny random-weight model to {root}")


def mount(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")
