"""The run folder: what a training run writes, and how it is found again (resume, export).

::

    RUN/
      run.json                  stage, where the weights came from, the dataset, the version
      config.yaml               the resolved TrainConfig (what --resume continues with)
      base/                     the initial weights in the official layout (frozen networks come from here)
      checkpoints/step-00001000/  accelerate state (model.safetensors = the trained networks, optimizer,
                                scaler, RNG) + trainer.json (step, samples seen, skipped clips)
      metrics.csv               step, loss terms, grad_norm, lr, samples_per_s, skipped, elapsed_s
      tb/                       TensorBoard event files (accelerate's tracker)
      validation/step-00001000.png   reference | driving | generated strips

Everything is written atomically: the folder itself appears (renamed from a hidden staging folder) only
once its config and base weights are complete, and each checkpoint likewise.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from personalive_cli.errors import UserError

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
BASE_DIR = "base"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.csv"
VALIDATION_DIR = "validation"
TRACKER_DIR = "tb"
TRAINER_STATE = "trainer.json"
MODEL_FILE = "model.safetensors"  # accelerate's name for the first prepared model
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def base(self) -> Path:
        return self.path / BASE_DIR

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def validation(self) -> Path:
        return self.path / VALIDATION_DIR

    def is_run(self) -> bool:
        return self.run_file.is_file()

    def info(self) -> dict:
        try:
            return json.loads(self.run_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{self.run_file} is damaged ({exc})") from None

    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints (those holding trainer.json), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        steps = []
        for d in self.checkpoints.iterdir():
            match = _STEP_DIR.match(d.name)
            if match and (d / TRAINER_STATE).is_file() and (d / MODEL_FILE).is_file():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / step_name(step)

    def latest_checkpoint(self) -> Path | None:
        steps = self.checkpoint_steps()
        return self.checkpoint(steps[-1]) if steps else None

    def prune_checkpoints(self, keep: int) -> None:
        for step in self.checkpoint_steps()[:-keep]:
            shutil.rmtree(self.checkpoint(step), ignore_errors=True)


def check_new_run(path: Path) -> None:
    """A fresh run may go into a folder that does not exist yet or is empty; never into another run."""
    from personalive_cli.io.outputs import check_output_folder

    check_output_folder(path)
    run = RunFolder(path)
    if run.is_run():
        steps = run.checkpoint_steps()
        where = f"at step {steps[-1]}" if steps else "with no checkpoint yet"
        raise UserError(f"{path} already holds a training run ({where}); continue it with --resume latest, or "
                        "choose another --output")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"{path} is not empty and holds no training run; choose a new --output folder")


def open_run(path: Path, stage: str | None = None) -> RunFolder:
    """An existing run folder (for --resume and export); one-line errors otherwise."""
    run = RunFolder(Path(path))
    if not run.path.is_dir():
        raise UserError(f"run folder not found: {run.path}")
    if not run.is_run():
        raise UserError(f"{run.path} is not a training run folder (no {RUN_FILE})")
    info = run.info()
    if stage is not None and info.get("stage") != stage:
        raise UserError(f"{run.path} is a {info.get('stage')} run, not {stage}")
    return run


def create_run(path: Path, write) -> RunFolder:
    """Write a new run folder atomically: ``write(staging)`` fills a hidden folder beside ``path``, which is
    then renamed to ``path`` (an existing empty ``path`` is replaced). Nothing remains if ``write`` fails."""
    import tempfile

    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=parent))
    try:
        write(staging)
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RunFolder(path)


class MetricsLog:
    """metrics.csv: one row per logged step, fixed columns (empty where a step has no value).

    On resume, rows after the resumed step (logged after the last checkpoint, then lost) are dropped, so
    the file always describes one uninterrupted run."""

    def __init__(self, path: Path, columns: list[str], resume_step: int | None = None):
        self.path, self.columns = path, list(columns)
        if path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                rows = [r for r in reader if resume_step is not None and int(r["step"]) <= resume_step]
                self.columns = list(reader.fieldnames or self.columns)
            self._rewrite(rows)
        else:
            self._rewrite([])

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.part")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(
                {k: _fmt(row.get(k, "")) for k in self.columns})


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
