"""`personalive train export RUN OUT`: the official layout, accepted by `weights check` and `animate`."""

from __future__ import annotations

import torch
from fake_training_data import RUN_STEPS
from helpers import invoke, one_error_line, probe
from safetensors.torch import load_file

from personalive_cli.pipeline.components import PersonaLiveModels


def test_export_then_weights_check_then_animate(tiny_run, demo_data, demo_ref, tmp_path):
    out = tmp_path / "exported"
    r = invoke("train", "export", tiny_run, out)
    assert r.returncode == 0, r.stderr
    assert f"exported step {RUN_STEPS}" in r.stderr
    r = invoke("weights", "check", out)
    assert r.returncode == 0, r.stderr
    models = PersonaLiveModels.from_pretrained(out)
    trained = load_file(str(tiny_run / "checkpoints" / f"step-{RUN_STEPS:08d}" / "model.safetensors"))
    states = {name: getattr(models, name).state_dict() for name in {k.split(".")[1] for k in trained}}
    for key, value in trained.items():
        _, name, param = key.split(".", 2)
        assert torch.equal(states[name][param], value), key
    video = tmp_path / "out.mp4"
    r = invoke("animate", demo_ref, demo_data / "videos" / "demo.mp4", "--weights", out, "--size", 128, "--frames", 4,
               "--crop", "none", "--device", "cpu", "-o", video)
    assert r.returncode == 0, r.stderr
    assert probe(video)["frames"] == 4


def test_export_errors(tiny_run, tmp_path):
    assert "not empty" in one_error_line(invoke("train", "export", tiny_run, tiny_run.parent))
    assert "no checkpoint of step 3" in one_error_line(invoke("train", "export", tiny_run, tmp_path / "o", "--step", 3))
    assert "not a training run folder" in one_error_line(invoke("train", "export", tmp_path, tmp_path / "o"))
    assert "inside the run folder" in one_error_line(invoke("train", "export", tiny_run, tiny_run / "out"))
    assert not (tmp_path / "o").exists() and not (tiny_run / "out").exists()
