"""Longer acceptance runs (``-m slow``; minutes on one CPU thread): Stage I over-fits one clip, and a run
stopped after 10 steps and resumed for 10 more equals 20 uninterrupted steps.

    pytest -m slow tests/training/test_long_runs.py

`.ci/run` runs them (with the 2-process accelerate test) after the default test command.
"""

from __future__ import annotations

import csv
import math

import pytest
from fake_training_data import SPEC, write_dataset
from helpers import invoke
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_clip(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("one_clip") / "DATA", n_clips=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_40_steps_on_one_clip_lower_the_loss_by_30_percent(one_clip, tmp_path, seed):
    """The validation loss (fixed samples and draws, no conditioning dropout) before and after 40 steps of the
    tiny preset (random tiny networks, lr 1e-3)."""
    run = tmp_path / "RUN"
    r = invoke("train", "stage1", one_clip, "--output", run, "--preset", "tiny", "--max-steps", 40, "--seed", seed,
               "--set", f"dataset={SPEC}", "--set", "validate_every=40", "--set", "checkpoint_every=40",
               "--set", "log_with=none")
    assert r.returncode == 0, r.stderr
    rows = {int(r["step"]): r for r in csv.DictReader((run / "metrics.csv").open())}
    before, after = float(rows[0]["val_loss"]), float(rows[40]["val_loss"])
    print(f"seed {seed}: validation loss {before:.4g} -> {after:.4g} ({100 * (1 - after / before):.1f}% lower)")
    assert math.isfinite(after) and after <= 0.7 * before


def test_10_steps_stop_resume_10_equals_20_steps(one_clip, tmp_path):
    common = ["--preset", "tiny", "--set", f"dataset={SPEC}", "--set", "validate_every=0", "--set", "log_with=none",
              "--set", "checkpoint_every=10"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert invoke("train", "stage1", one_clip, "--output", straight, "--max-steps", 20, *common).returncode == 0
    assert invoke("train", "stage1", one_clip, "--output", split, "--max-steps", 10, *common).returncode == 0
    r = invoke("train", "stage1", one_clip, "--output", split, "--resume", "latest", "--max-steps", 20)
    assert r.returncode == 0 and "resumed from" in r.stderr, r.stderr
    a = load_file(str(straight / "checkpoints" / "step-00000020" / "model.safetensors"))
    b = load_file(str(split / "checkpoints" / "step-00000020" / "model.safetensors"))
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    print(f"max |weight difference| after 20 steps, straight vs 10 + resume 10: {diff:.3g}")
    assert diff <= 1e-6


def test_stage3_2_steps_stop_resume_2_equals_4_steps(one_clip, tmp_path):
    """Stage III with its discriminator: the temporal modules and D after 2 + 2 resumed steps equal 4 straight."""
    common = ["--preset", "tiny", "--set", "validate_every=0", "--set", "log_with=none", "--set", "checkpoint_every=2"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert invoke("train", "stage3", one_clip, "--output", straight, "--max-steps", 4, *common).returncode == 0
    assert invoke("train", "stage3", one_clip, "--output", split, "--max-steps", 2, *common).returncode == 0
    r = invoke("train", "stage3", one_clip, "--output", split, "--resume", "latest", "--max-steps", 4)
    assert r.returncode == 0 and "resumed from" in r.stderr, r.stderr
    for name in ("model.safetensors", "model_1.safetensors"):
        a = load_file(str(straight / "checkpoints" / "step-00000004" / name))
        b = load_file(str(split / "checkpoints" / "step-00000004" / name))
        assert a.keys() == b.keys()
        diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
        print(f"{name}: max |weight difference| after 4 steps, straight vs 2 + resume 2: {diff:.3g}")
        assert diff <= 1e-6
