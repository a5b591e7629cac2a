"""`accelerate launch` with 2 CPU processes (gloo): the same command line trains data-parallel.

Marked slow (about 45 s on 2 cores: two processes each import the stack), so the README's test command
stays under its budget; `.ci/run` runs it with the other training acceptance runs (`-m slow tests/training`).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
from fake_training_data import SPEC
from helpers import REPO, accelerate_launch


def _launch(stage: str, data: Path, run: Path, *args: str) -> subprocess.CompletedProcess:
    """`accelerate launch` of `personalive train STAGE` with 2 CPU processes (gloo)."""
    paths = [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(paths)}
    cmd = [*accelerate_launch(2), "-m", "personalive_cli.cli.app", "train", stage, str(data), "--output", str(run),
           "--preset", "tiny", "--set", "validate_every=0", "--set", "log_with=none", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(train_data, tmp_path):
    run = tmp_path / "RUN"
    r = _launch("stage1", train_data, run, "--max-steps", "5", "--set", f"dataset={SPEC}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "all 2 processes hold identical weights" in r.stderr
    assert r.stderr.count("trained to step 5") == 1  # one summary, from process 0
    state = json.loads((run / "checkpoints" / "step-00000005" / "trainer.json").read_text())
    assert state["samples"] == 5 * 2  # batch 1 on each of 2 processes
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert {p.name for p in (run / "checkpoints" / "step-00000005").iterdir()} >= {"random_states_0.pkl",
                                                                                  "random_states_1.pkl"}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["stage2", "stage3"])
def test_accelerate_launch_two_cpu_processes_stages_2_and_3(stage, train_data, tmp_path):
    """The generator and the discriminator train data-parallel (Stage III: three generator steps per sequence);
    both processes hold identical weights of both at the end."""
    run = tmp_path / "RUN"
    r = _launch(stage, train_data, run, "--max-steps", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "all 2 processes hold identical weights" in r.stderr
    assert r.stderr.count("trained to step 2") == 1
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(float(r["d_loss"]) > 0 for r in rows)  # the discriminator updated on every step
    assert {p.name for p in (run / "checkpoints" / "step-00000002").iterdir()} >= {"model.safetensors",
                                                                                  "model_1.safetensors"}
