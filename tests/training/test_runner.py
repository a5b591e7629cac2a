"""The runner on a tiny run: the run folder, metrics, strips, the frozen/trained split across checkpoints,
Ctrl-C and resume (bit for bit), corrupt clips, and every bad input as a user types it."""

from __future__ import annotations

import csv
import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fake_training_data import RUN_STEPS, SPEC, TINY_ARGS, write_clip, write_dataset
from helpers import invoke, one_error_line
from PIL import Image
from safetensors.torch import load_file

from personalive_cli.training.clips import MANIFEST_NAME, read_train_manifest, write_train_manifest
from personalive_cli.training.config import resolve_config
from personalive_cli.training.runner import Runner
from personalive_cli.training.stage1 import Stage1


def _weights(run, step):
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


def test_run_folder(tiny_run, tiny_weights):
    info = json.loads((tiny_run / "run.json").read_text())
    assert info["stage"] == "stage1" and str(tiny_weights) in info["init"]
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert (config["max_steps"], config["size"], config["dataset"], config["init"]) == (4, 64, None, str(tiny_weights))
    assert sorted(p.name for p in (tiny_run / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert {"model.safetensors", "optimizer.bin", "trainer.json"} <= {p.name for p in (tiny_run / "checkpoints" /
                                                                      "step-00000004").iterdir()}
    assert invoke("weights", "check", tiny_run / "base").returncode == 0
    assert list((tiny_run / "tb").rglob("events.out.tfevents.*"))
    rows = list(csv.DictReader((tiny_run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(RUN_STEPS + 1))
    assert rows[0]["val_loss"] and rows[-1]["val_loss"] and not rows[1]["val_loss"]
    for r in rows[1:]:
        assert float(r["loss"]) == pytest.approx(float(r["mse"]) + float(r["face"]), rel=1e-4)
        assert float(r["lr"]) == 1e-3 and float(r["samples_per_s"]) > 0 and r["skipped"] == "0"
    for step in (0, RUN_STEPS):  # reference | driving | generated, 4 frames of 64²
        strip = np.asarray(Image.open(tiny_run / "validation" / f"step-{step:08d}.png"))
        assert strip.shape == (3 * 64, 4 * 64, 3)
        assert np.array_equal(strip[:64, :64], strip[:64, 64:128])  # the reference, in every column


def test_trained_and_frozen_parts_across_the_run(tiny_run, tiny_models):
    """Checkpoints hold the trained networks; their frozen parts are the base weights, bit for bit."""
    base = {f"trained.{name}.{k}": v for name in Stage1.trained_modules
            for k, v in getattr(tiny_models, name).state_dict().items()}
    after = _weights(tiny_run, RUN_STEPS)
    assert after.keys() == base.keys()
    frozen = [k for k in base if ".temporal_modules." in k or k.startswith("trained.reference_unet.up_blocks.3.")]
    assert frozen and all(torch.equal(after[k], base[k]) for k in frozen)
    params = {f"trained.{name}.{k}" for name in Stage1.trained_modules
              for k, _ in getattr(tiny_models, name).named_parameters()}
    trained = [k for k in params if k not in frozen]
    changed = [k for k in trained if not torch.equal(after[k], base[k])]
    assert len(changed) > 0.9 * len(trained)
    for name in Stage1.trained_modules:
        assert any(k.startswith(f"trained.{name}.") for k in changed), name


def _ignores_sigint(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return bool(int(re.search(r"^SigIgn:\s*([0-9a-f]+)", status, re.M).group(1), 16) & (1 << (signal.SIGINT - 1)))


def test_ctrl_c_saves_a_checkpoint_then_resume_matches_the_uninterrupted_run(tiny_run, demo_data, tiny_weights,
                                                                              tmp_path):
    """Ctrl-C in a terminal signals the whole process group, data-loader workers too: the step under way
    finishes (the workers keep serving it), a checkpoint is written; --resume continues exactly where the
    uninterrupted run went."""
    run = tmp_path / "RUN"
    config = resolve_config("tiny", overrides={"dataset": SPEC, "init": str(tiny_weights), "max_steps": RUN_STEPS,
                                               "checkpoint_every": 100, "validate_every": 0, "num_workers": 1})

    def ctrl_c(start, total):  # as training starts: the workers exist, no batch has been read yet
        workers = multiprocessing.active_children()
        assert workers
        for w in workers:
            deadline = time.monotonic() + 30
            while not _ignores_sigint(w.pid):  # (a worker interrupted before its init exits quietly)
                assert time.monotonic() < deadline
                time.sleep(0.01)
            os.kill(w.pid, signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    result = Runner(Stage1(), demo_data, run, config, on_start=ctrl_c).run()
    assert result.interrupted and result.step == 1 and result.checkpoint == run / "checkpoints" / "step-00000001"
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    r = invoke("train", "stage1", demo_data, "--output", run, "--resume", "latest", "--max-steps", 2)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stderr and "trained to step 2" in r.stderr
    resumed, straight = _weights(run, 2), _weights(tiny_run, 2)  # the shared run has a checkpoint at step 2
    assert max((resumed[k].float() - straight[k].float()).abs().max().item() for k in straight) <= 1e-6
    steps = [int(r["step"]) for r in csv.DictReader((run / "metrics.csv").open())]
    assert steps == [1, 2]  # one row per step across the resume (no step-0 validation here)
    line = one_error_line(invoke("train", "stage1", demo_data, "--output", run, "--resume", "latest",
                                 "--set", "batch_size=2"))
    assert "batch_size cannot change" in line


def test_corrupt_clip_is_skipped_counted_and_reported(tmp_path, tiny_weights):
    data = write_dataset(tmp_path / "DATA", n_clips=1)
    root, clips = read_train_manifest(data)
    clips.append(write_clip(data, "broken", seed=5))  # the first row (rows are sorted): the first sample's clip
    (data / "videos" / "broken.mp4").write_bytes(b"\x00" * 100)  # damaged after preparation
    write_train_manifest(data / MANIFEST_NAME, clips)
    # (with 2 accumulated micro-batches: samples 0 and 1 make the step)
    r = invoke("train", "stage1", data, "--output", tmp_path / "RUN", "--init", tiny_weights, "--max-steps", 1,
               "--preset", "tiny", "--set", f"dataset={SPEC}", "--set", "validate_every=0",
               "--set", "gradient_accumulation_steps=2")
    assert r.returncode == 0, r.stderr
    assert "skipped corrupt clip broken" in r.stderr and "corrupt clip reads skipped (broken)" in r.stderr
    rows = list(csv.DictReader((tmp_path / "RUN" / "metrics.csv").open()))
    assert int(rows[-1]["skipped"]) >= 1
    state = json.loads((tmp_path / "RUN" / "checkpoints" / "step-00000001" / "trainer.json").read_text())
    assert state["samples"] == 2 and state["skipped"]["broken"] >= 1


# ------------------------------------------------------------------------------------------------ bad inputs


def _no_run(path):
    return not path.exists() and not [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]


def _data_variant(train_data, tmp_path, change):
    data = tmp_path / "DATA"
    shutil.copytree(train_data, data)
    change(data)
    return data


@pytest.mark.parametrize("case, expected", [
    ("missing", "dataset not found"),
    ("empty", "has no train_manifest.csv"),
    ("no rows", "lists no clips"),
    ("video gone", "video not found"),
    ("no boxes", "boxes not found"),
])
def test_bad_datasets(case, expected, train_data, tmp_path):
    if case == "missing":
        data = tmp_path / "nothing"
    elif case == "empty":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "no rows":
        data = _data_variant(train_data, tmp_path, lambda d: write_train_manifest(d / MANIFEST_NAME, []))
    elif case == "video gone":
        data = _data_variant(train_data, tmp_path, lambda d: (d / "videos" / "clip1.mp4").unlink())
    else:
        data = _data_variant(train_data, tmp_path, lambda d: (d / "boxes" / "clip0.npz").unlink())
    out = tmp_path / "RUN"
    line = one_error_line(invoke("train", "stage1", data, "--output", out, *TINY_ARGS))
    assert expected in line
    assert _no_run(out)


def test_bad_init_folders(train_data, tmp_path, tiny_weights):
    out = tmp_path / "RUN"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is not a weights folder" in one_error_line(invoke("train", "stage1", train_data, "--output", out,
                                                              "--init", empty, *TINY_ARGS))
    bad = tmp_path / "bad"
    shutil.copytree(tiny_weights, bad)
    state = torch.load(bad / "personalive" / "pose_guider.pth")
    state["conv_in.weight"] = state["conv_in.weight"][:, :2]
    torch.save(state, bad / "personalive" / "pose_guider.pth")
    line = one_error_line(invoke("train", "stage1", train_data, "--output", out, "--init", bad, *TINY_ARGS))
    assert "pose_guider.pth: key conv_in.weight has shape" in line
    assert _no_run(out)
    helped = invoke("train", "stage1", "--help").stdout  # the --help the errors point at: presets, --init folders
    assert "official (the released recipe" in helped and "X-NeMo" in helped


def test_bad_config_and_batch(train_data, tmp_path):
    out = tmp_path / "RUN"
    cases = [(["--set", "learning_rat=1e-4"], "unknown config key 'learning_rat'"),
             (["--set", "global_batch_size=3", "--set", "batch_size=2"], "global_batch_size 3 is not a multiple"),
             (["--set", "batch_size=0"], "batch_size must be at least 1"),
             (["--config", tmp_path / "missing.yaml"], "config file not found"),
             (["--resume", "earliest"], "--resume takes 'latest'")]
    if not torch.cuda.is_available():
        cases.append((["--set", "mixed_precision=fp16"], "fp16 needs a CUDA device"))
    if importlib.util.find_spec("bitsandbytes") is None:
        cases.append((["--set", "optimizer=adamw8bit"], "adamw8bit needs bitsandbytes"))
    for args, expected in cases:
        assert expected in one_error_line(invoke("train", "stage1", train_data, "--output", out, *TINY_ARGS, *args))
    f = tmp_path / "c.yaml"
    f.write_text("sizee: 128\n")
    assert "c.yaml: unknown config key 'sizee'" in one_error_line(
        invoke("train", "stage1", train_data, "--output", out, *TINY_ARGS, "--config", f))
    assert _no_run(out)


def test_output_folder_holding_another_run_or_files(tiny_run, train_data, tmp_path):
    before = sorted(p.name for p in (tiny_run / "checkpoints").iterdir())
    line = one_error_line(invoke("train", "stage1", train_data, "--output", tiny_run, *TINY_ARGS))
    assert "already holds a training run (at step 4)" in line and "--resume latest" in line
    assert sorted(p.name for p in (tiny_run / "checkpoints").iterdir()) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert "is not empty" in one_error_line(invoke("train", "stage1", train_data, "--output", other, *TINY_ARGS))
    assert "not found" in one_error_line(invoke("train", "stage1", train_data, "--output", tmp_path / "nope",
                                                "--resume", "latest"))
    assert "nothing to do" in invoke("train", "stage1", train_data, "--output", tiny_run, "--resume", "latest").stderr


def test_cli_after_an_interrupted_run(monkeypatch, train_data, tmp_path):
    """What the command prints and returns when the runner reports an interrupted run (exit status 130)."""
    from personalive_cli.training.runner import RunResult

    ckpt = tmp_path / "RUN" / "checkpoints" / "step-00000003"
    monkeypatch.setattr(Runner, "run", lambda self: RunResult(tmp_path / "RUN", 3, True, ckpt, start_step=0))
    r = invoke("train", "stage1", train_data, "--output", tmp_path / "RUN", *TINY_ARGS)
    assert r.returncode == 130
    assert f"interrupted at step 3; checkpoint {ckpt}" in r.stderr and "--resume latest" in r.stderr
