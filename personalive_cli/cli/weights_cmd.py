"""``personalive weights``: download the release, check a weights folder, write the tiny test model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from personalive_cli.cli.console import err, handle_errors

weights_app = typer.Typer(no_args_is_help=True, help="Download and check PersonaLive (and LivePortrait) weights.")


@weights_app.command("download")
@handle_errors
def download_cmd(
    root: Annotated[str | None, typer.Argument(help="target folder (official layout; default: the Hugging Face "
                                               "cache, found without --weights); or `liveportrait [DIR]`",
                                               metavar="[liveportrait] [DIR]", show_default=False)] = None,
    target: Annotated[Path | None, typer.Argument(help="target folder after `liveportrait`", show_default=False)] = None,
    taesd: Annotated[bool, typer.Option("--taesd", help="also fetch the tiny VAE decoder (for --vae tiny)")] = False,
) -> None:
    """Fetch the PersonaLive release and its base models from the Hugging Face hub (resumable).

    `personalive weights download liveportrait [DIR]` fetches LivePortrait's release instead (KwaiVGI/LivePortrait:
    its five checkpoints and the cropping ONNX models) into DIR/liveportrait and DIR/insightface."""
    from personalive_cli.weights import HUB_REPOS, download

    if root == "liveportrait":
        from baselines.liveportrait.models import HUB_REPO
        from baselines.liveportrait.models import download as download_liveportrait

        dest = target or Path("pretrained_weights")
        err.print(f"downloading {HUB_REPO} into {dest}")
        download_liveportrait(dest)
        err.print(f"done; use it with --method liveportrait --weights {dest} (or export LIVEPORTRAIT_WEIGHTS={dest})")
        return
    if target is not None:
        from personalive_cli.errors import UserError

        raise UserError(f"unexpected extra argument {target} (only `download liveportrait DIR` takes two)")
    where = root or "the Hugging Face cache"
    err.print(f"downloading {', '.join(HUB_REPOS[k] for k in HUB_REPOS if k != 'taesd' or taesd)} into {where}")
    download(root, include_taesd=taesd)
    if root is None:
        err.print("done; `personalive animate ... --method personalive` finds it without --weights")
    else:
        err.print(f"done; use it with --weights {root} (or export PERSONALIVE_WEIGHTS={root})")


@weights_app.command("check")
@handle_errors
def check_cmd(
    root: Annotated[str, typer.Argument(help="weights folder to check; or `liveportrait DIR`",
                                        metavar="[liveportrait] ROOT")],
    target: Annotated[Path | None, typer.Argument(help="weights folder after `liveportrait`", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")] = False,
) -> None:
    """Report, file by file, what is present, missing, and whether keys and shapes match.

    `personalive weights check liveportrait DIR` checks LivePortrait's files only; a folder holding both
    releases (personalive/ and liveportrait/) is checked for both."""
    from personalive_cli.errors import UserError
    from personalive_cli.pipeline.components import check_layout

    only_liveportrait = root == "liveportrait" and target is not None
    root = target if only_liveportrait else Path(root)
    if not root.is_dir():
        raise UserError(f"weights folder not found: {root}")
    from baselines.liveportrait.models import LivePortraitLayout
    from baselines.liveportrait.models import check_layout as check_liveportrait

    has_liveportrait = LivePortraitLayout.from_root(root).liveportrait.is_dir()
    with err.status("checking keys and shapes..."):
        rows = [] if only_liveportrait else check_layout(root)
        if only_liveportrait or has_liveportrait:
            rows += check_liveportrait(root)
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
    root: Annotated[str, typer.Argument(help="folder to write; or `liveportrait DIR`", metavar="[liveportrait] ROOT")],
    target: Annotated[Path | None, typer.Argument(help="folder after `liveportrait`", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="seed of the random weights")] = 0,
) -> None:
    """Write a tiny random-weight PersonaLive (same architecture, few channels) in the official layout.

    Its output is noise-like: it exists to try the whole pipeline without a download, and for tests.
    `make-tiny liveportrait DIR` writes a tiny LivePortrait in its official layout instead."""
    from personalive_cli.io.outputs import check_output_folder
    from personalive_cli.pipeline.components import PersonaLiveConfig, PersonaLiveModels

    if root == "liveportrait" and target is not None:
        from baselines.liveportrait.models import LivePortraitConfig, LivePortraitModels

        check_output_folder(target)
        LivePortraitModels.random(LivePortraitConfig.tiny(), seed=seed).save_pretrained(target)
        err.print(f"wrote a tiny random-weight LivePortrait to {target}")
        return
    root = check_output_folder(root)
    if (root / "personalive").exists():
        from personalive_cli.errors import UserError

        raise UserError(f"{root} already holds PersonaLive weights; make-tiny writes only into a new folder")
    PersonaLiveModels.random(PersonaLiveConfig.tiny(), seed=seed).save_pretrained(root)
    err.print(f"wrote a tiny random-weight model to {root}")


def mount(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")
