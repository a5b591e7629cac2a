"""``personalive train export RUN OUT``: a run's trained networks in the official release layout.

The run's base weights (``RUN/base``: the frozen networks and everything the stage does not train) with the
trained networks of one checkpoint (the newest by default) loaded over them (a Stage III checkpoint holds the
temporal modules only, so its export is the base with a new ``temporal_module.pth``), written with
`PersonaLiveModels.save_pretrained`, so ``personalive weights check OUT`` and ``--weights OUT`` work.
"""

from __future__ import annotations

from pathlib import Path

from personalive_cli.errors import UserError
from personalive_cli.training.run_folder import MODEL_FILE, open_run


def load_run_models(run_path: str | Path, step: int | None = None):
    """(PersonaLiveModels with the checkpoint's trained networks, the checkpoint's step)."""
    from safetensors.torch import load_file

    from personalive_cli.pipeline.components import PersonaLiveModels

    run = open_run(Path(run_path))
    steps = run.checkpoint_steps()
    if not steps:
        raise UserError(f"{run.path} has no checkpoint yet (one is written every checkpoint_every steps, at the "
                        "end, and on Ctrl-C)")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise UserError(f"{run.path} has no checkpoint of step {step}; it has {', '.join(map(str, steps))}")
    models = PersonaLiveModels.from_pretrained(run.base)
    path = run.checkpoint(step) / MODEL_FILE
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged file in any way is one line
        raise UserError(f"cannot read {path} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    by_module: dict[str, dict] = {}
    for key, value in state.items():
        prefix, _, rest = key.partition(".")
        name, _, param = rest.partition(".")
        if prefix != "trained" or not hasattr(models, name):
            raise UserError(f"{path}: unexpected key {key}")
        by_module.setdefault(name, {})[param] = value
    for name, module_state in by_module.items():
        # A checkpoint may hold only part of a network (Stage III: its temporal modules); the base has the rest.
        module = getattr(models, name)
        own = module.state_dict()
        unexpected = [k for k, v in module_state.items() if k not in own or own[k].shape != v.shape]
        if unexpected:
            raise UserError(f"{path}: {name} does not match the run's base weights (unexpected or misshapen "
                            f"{unexpected[:2]})")
        module.load_state_dict(module_state, strict=False)
    return models.eval().requires_grad_(False), step


def export_run(run_path: str | Path, out: str | Path, step: int | None = None) -> tuple[Path, int]:
    """Write the official layout into ``out`` (new or empty); returns (out, step)."""
    from personalive_cli.io.outputs import check_output_folder

    out = Path(out)
    open_run(Path(run_path))
    check_output_folder(out, inputs=[run_path])
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; export into a new folder")
    if Path(out).resolve().is_relative_to(Path(run_path).resolve()):
        raise UserError(f"export {out} inside the run folder {run_path}; choose a folder outside it")
    models, step = load_run_models(run_path, step)
    models.save_pretrained(out)
    return out, step
