"""Shared training fixtures: a synthetic DATA folder and one tiny Stage-I run that several tests read.

The dataset class is the test double ``fake_training_data.ImagePairDataset`` (same contract as
``personalive_cli.training.datasets``), selected with the config key ``dataset``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_training_data import RUN_STEPS, TINY_ARGS, write_dataset
from helpers import invoke


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> Path:
    """DATA/ with two 24-frame 128² synthetic clips (manifest, videos, boxes)."""
    return write_dataset(tmp_path_factory.mktemp("train_data") / "DATA")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, train_data, tiny_weights) -> Path:
    """A 4-step tiny run started from the official-layout tiny weights, as a user types it."""
    run = tmp_path_factory.mktemp("runs") / "RUN"
    r = invoke("train", "stage1", train_data, "--output", run, "--init", tiny_weights, "--max-steps", RUN_STEPS,
               *TINY_ARGS)
    assert r.returncode == 0, r.stderr
    assert f"trained to step {RUN_STEPS}" in r.stderr
    return run
