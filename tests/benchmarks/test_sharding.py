"""Sharded runs: 2 real CPU processes under ``accelerate launch``, and ``--shard i/n`` + ``bench merge``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
from helpers import accelerate_launch
from typer.testing import CliRunner

from personalive_cli.cli.app import app

BENCH = ["bench", "--methods", "still", "--size", "128", "--device", "cpu", "--metrics", "LPIPS,tLP (self)"]


def _measured(out: Path) -> pd.DataFrame:
    df = pd.read_csv(out / "results.csv")
    return df[df["source"] == "measured"].set_index("method")


def test_accelerate_launch_two_cpu_processes(tiny_dataset, tmp_path, empty_metric_caches):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [*accelerate_launch(2), "-m", "personalive_cli.cli.app", *BENCH, "--dataset", str(tiny_dataset),
           "--output", str(out), "--speed", "--warmup", "1", "--steps", "3"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    shards = [json.loads((out / "shards" / f"{i}-of-2.json").read_text()) for i in range(2)]
    done = [set(s["quality"]) for s in shards]
    assert done[0] and done[1] and not done[0] & done[1]  # both processes worked, on different videos
    assert len(done[0] | done[1]) == 3
    assert shards[0]["speed"] == ["still"] and shards[1]["speed"] == []
    row = _measured(out).loc["still"]
    assert row["videos"] == 3 and row["FPS"] > 0
    assert "waiting for the other shards" in r.stderr and "shard 1/2 done" in r.stderr


def test_manual_shards_then_merge(tiny_dataset, tmp_path, empty_metric_caches):
    out = tmp_path / "out"
    runner = CliRunner()
    for i in (1, 0):
        r = runner.invoke(app, [*BENCH, "--dataset", str(tiny_dataset), "--output", str(out), "--shard", f"{i}/2"])
        assert r.exit_code == 0, r.output
        if i == 1:
            assert "when every shard is done: personalive bench merge" in r.stderr
    assert "personalive bench: quality" in r.stderr  # the last shard to finish merged
    r = runner.invoke(app, ["bench", "merge", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    still = next(x for x in rows if x["method"] == "still" and x["source"] == "measured")
    assert still["videos"] == 3
    r = runner.invoke(app, [*BENCH, "--dataset", str(tiny_dataset), "--output", str(out), "--shard", "2/2"])
    assert r.exit_code == 1 and "--shard must be i/n" in r.stderr


def test_stale_shard_markers_of_another_run_are_not_taken_as_finished(tiny_dataset, tmp_path, empty_metric_caches):
    """A marker left by an earlier run with other settings must not trigger the merge of this run."""
    from benchmarks.runner import shards_finished

    out = tmp_path / "out"
    runner = CliRunner()
    r = runner.invoke(app, [*BENCH, "--dataset", str(tiny_dataset), "--output", str(out), "--shard", "1/2",
                            "--max-videos", "2"])
    assert r.exit_code == 0, r.output
    # a new run (other settings) into the same folder: shard 0 finishes, shard 1's old marker is stale
    r = runner.invoke(app, [*BENCH, "--dataset", str(tiny_dataset), "--output", str(out), "--shard", "0/2"])
    assert r.exit_code == 0, r.output
    assert "when every shard is done" in r.stderr and not (out / "results.csv").exists()
    assert shards_finished(out, 2) == [0]
