"""``personalive train ...``: the three training stages and export of a run in the official layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personalive_cli.cli.console import err, handle_errors

train_app = typer.Typer(no_args_is_help=True, help="Train PersonaLive (Stages I, II, III) and export the result.")


class TrainProgress:
    """Rich progress on stderr for the main process: steps, loss, samples/s, ETA; events as lines above."""

    def __init__(self, name: str = "train") -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("[cyan]{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=err, transient=True)
        self.task = None
        self.name = name
        self.last: dict = {}

    def start(self, start_step: int, max_steps: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(self.name, total=max_steps, completed=start_step, info="")

    def step(self, step: int, row: dict) -> None:
        if "loss" in row:  # a logged step (every log_every steps)
            self.last = row
            info = f"loss {row['loss']:.4f}  {row['samples_per_s']:.2f} samples/s"
            if row.get("skipped"):
                info += f"  {row['skipped']} corrupt skipped"
            self.progress.update(self.task, info=info)
        self.progress.update(self.task, completed=step)

    def event(self, text: str) -> None:
        from rich.markup import escape

        self.progress.console.print(escape(text), highlight=False, soft_wrap=True)

    def stop(self) -> None:
        self.progress.stop()


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


STAGES = {
    "stage1": ("personalive_cli.training.stage1:Stage1", """Stage I: image-level hybrid motion training (the official recipe; see README "Train").

    Single process: `personalive train stage1 DATA --output RUN --init DIR`; many GPUs or nodes: the same
    arguments after `accelerate launch [--multi_gpu --num_processes N ...] -m personalive_cli.cli.app train
    stage1`. Ctrl-C saves a checkpoint; `--resume latest` continues.

    --init DIR is one of: the official layout (personalive/denoising_unet.pth ..., e.g. from `personalive
    weights download DIR` or `personalive train export`); X-NeMo-style files (xnemo_denoising_unet.pth,
    xnemo_reference_unet.pth, xnemo_motion_encoder.pth in DIR or DIR/xnemo, pose_guider.pth); or, from
    scratch, sd-image-variations-diffusers/unet/ with its weights. The last two also need
    sd-vae-ft-mse/, sd-image-variations-diffusers/image_encoder/ and LivePortrait's motion_extractor.pth."""),
    "stage2": ("personalive_cli.training.stage2:Stage2", """Stage II: few-step appearance distillation with the timestep-conditioned GAN (see README "Train").

    Unrolls n ~ U{1..4} passes down the ladder 999/666/333/0 and grades the last one on decoded pixels:
    MSE + face-region MSE + 2 LPIPS-VGG + 0.05 adversarial. --init is a Stage I run folder or any
    official-layout folder. LPIPS needs torchvision's vgg16-397923af.pth (torch hub's cache, or --set
    lpips_vgg=PATH); the discriminator starts from --set discriminator_init=stylegan2_discriminator_ffhq512.pth
    when given, else at random. The official recipe uses 8-bit AdamW (bitsandbytes, CUDA); elsewhere add
    --set optimizer=adamw. Same launch, Ctrl-C and --resume as stage1."""),
    "stage3": ("personalive_cli.training.stage3:Stage3", """Stage III: sliding training of the temporal modules (see README "Train").

    Rolls each 40-frame sequence through seven 16-frame windows exactly as streaming inference does and
    grades windows 0, 3 and 6 (three optimiser steps per sequence); only the temporal modules (and the
    discriminator) train. --init is a Stage II run folder (its discriminator comes along) or the released
    weights. Same LPIPS, discriminator, launch, Ctrl-C and --resume notes as stage2."""),
}


def _train_stage(name: str, data: Path, output: Path, init: str | None, preset: str | None, config: Path | None,
                 set_: list[str] | None, max_steps: int | None, seed: int | None, resume: str | None) -> None:
    from personalive_cli.errors import UserError
    from personalive_cli.extras import require_extra
    from personalive_cli.training.config import TrainConfig, parse_overrides, read_yaml, resolve_config
    from personalive_cli.training.runner import Runner, load_dataset_class

    require_extra("train", "personalive train")
    stage = load_dataset_class(STAGES[name][0])()
    if resume not in (None, "latest"):
        raise UserError(f"--resume takes 'latest', got {resume!r}")
    overrides = parse_overrides(set_ or [])
    for key, value in (("max_steps", max_steps), ("seed", seed), ("init", init)):
        if value is not None:
            overrides[key] = value
    if resume:
        if preset is not None:
            raise UserError("--preset cannot be combined with --resume: the run continues with its own config")
        if config is not None:
            overrides = {**read_yaml(config), **overrides}
        train_config = TrainConfig()
    else:
        train_config = resolve_config(preset or "official", config, overrides, stage=name)
    main = _is_main_process()
    progress = TrainProgress(name) if main else None
    runner = Runner(stage, data, output, train_config, resume=bool(resume), overrides=overrides,
                    on_start=progress.start if progress else None, on_step=progress.step if progress else None,
                    on_event=progress.event if progress else lambda text: None)
    try:
        result = runner.run()
    finally:
        if progress:
            progress.stop()
    if not main or result.start_step is None:  # another process, or nothing was left to train
        return
    skipped = f"; {sum(result.skipped.values())} corrupt clip reads skipped ({', '.join(sorted(result.skipped))})" \
        if result.skipped else ""
    if result.interrupted:
        err.print(f"interrupted at step {result.step}; checkpoint {result.checkpoint}{skipped}. Continue with: "
                  f"personalive train {name} {data} --output {output} --resume latest", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(130)
    loss = f", loss {progress.last['loss']:.4f}" if progress and progress.last else ""
    err.print(f"trained to step {result.step}{loss} in {result.seconds:.1f} s; run folder {result.run}{skipped}. "
              f"Export with: personalive train export {output} OUT", highlight=False, soft_wrap=True)


def _register(name: str) -> None:
    def command(
        data: Annotated[Path, typer.Argument(help="dataset folder written by `personalive data prepare` "
                                                  "(train_manifest.csv, videos/, boxes/)")],
        output: Annotated[Path, typer.Option("--output", "-o", help="run folder (new, or the run to --resume)")],
        init: Annotated[str | None, typer.Option(help="initial weights: a run folder of the previous stage, the "
                                                      "official layout (e.g. pretrained_weights), X-NeMo-style files, "
                                                      "or SD image-variations (from scratch)")] = None,
        preset: Annotated[str | None, typer.Option(help="official (the released recipe of this stage), paper (the "
                                                        "paper's schedule) or tiny (random tiny networks, 64²)")] = None,
        config: Annotated[Path | None, typer.Option(help="YAML file of config keys (see "
                                                         "personalive_cli/training/config.py)")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="config KEY=VALUE (repeatable), e.g. --set "
                                                                     "batch_size=4")] = None,
        max_steps: Annotated[int | None, typer.Option(help="optimiser steps (Stage III: sequences) in total")] = None,
        seed: Annotated[int | None, typer.Option(help="random seed (default 12580, the official one)")] = None,
        resume: Annotated[str | None, typer.Option(help="'latest': continue the run in --output from its newest "
                                                        "checkpoint")] = None,
    ) -> None:
        _train_stage(name, data, output, init, preset, config, set_, max_steps, seed, resume)

    command.__doc__ = STAGES[name][1]
    command.__name__ = f"{name}_cmd"
    train_app.command(name)(handle_errors(command))


for _name in STAGES:
    _register(_name)


@train_app.command("export")
@handle_errors
def export_cmd(
    run: Annotated[Path, typer.Argument(help="a run folder written by `personalive train stage1|stage2|stage3`")],
    out: Annotated[Path, typer.Argument(help="new folder for the weights (official release layout)")],
    step: Annotated[int | None, typer.Option(help="the checkpoint to export (default: the newest)")] = None,
) -> None:
    """Write RUN's trained networks in the official layout: use with `--weights OUT` (animate, stream, bench)."""
    from personalive_cli.training.export import export_run

    path, at = export_run(run, out, step)
    err.print(f"exported step {at} of {run} to {path}; check it with: personalive weights check {path}",
              highlight=False, soft_wrap=True)


def mount(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
