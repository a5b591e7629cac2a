"""The whole training path as a user runs it, on the shared demo prepared with `data prepare`: stage1 (the
`tiny_run` fixture) → stage2 (`stage2_run`, from the Stage I run) → stage3 (`stage3_run`, from the Stage II run)
→ export → weights check → animate."""

from __future__ import annotations

import json

import torch
from helpers import invoke, probe
from safetensors.torch import load_file

from personalive_cli.pipeline.components import PersonaLiveModels
from personalive_cli.weights import read_state_dict


def test_stage1_stage2_stage3_export_animate(tiny_run, stage2_run, stage3_run, demo_data, demo_ref, tmp_path):
    # Stage II started from the Stage I run: its newest checkpoint over its base.
    info = json.loads((stage2_run / "run.json").read_text())
    assert info["stage"] == "stage2" and info["init"] == f"run {tiny_run} at step 4 (stage1)"
    start = PersonaLiveModels.from_pretrained(stage2_run / "base")
    states = {}
    for key, value in load_file(str(tiny_run / "checkpoints" / "step-00000004" / "model.safetensors")).items():
        _, name, param = key.split(".", 2)
        if name not in states:
            states[name] = getattr(start, name).state_dict()
        assert torch.equal(states[name][param], value), key
    header = (stage3_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "mse", "face", "lpips", "adversarial", "d_loss", "grad_norm", "d_grad_norm"} <= set(header)

    out = tmp_path / "weights"
    r = invoke("train", "export", stage3_run, out)
    assert r.returncode == 0, r.stderr
    r = invoke("weights", "check", out)
    assert r.returncode == 0, r.stderr
    # Stage III changed the temporal modules only: the export is Stage II's networks with a new temporal_module.pth.
    stage2 = PersonaLiveModels.from_pretrained(stage3_run / "base")
    for name in ("denoising_unet", "reference_unet", "pose_guider", "motion_encoder"):
        exported = read_state_dict(out / "personalive" / f"{name}.pth")
        own = getattr(stage2, name).state_dict()
        assert all(torch.equal(v, own[k]) for k, v in exported.items()), name
    temporal = read_state_dict(out / "personalive" / "temporal_module.pth")
    before = stage2.denoising_unet.state_dict()
    assert any(not torch.equal(v, before[k]) for k, v in temporal.items())

    video = tmp_path / "out.mp4"
    r = invoke("animate", demo_ref, demo_data / "videos" / "demo.mp4", "--weights", out, "--size", 128, "--frames", 4,
               "--crop", "none", "--device", "cpu", "-o", video)
    assert r.returncode == 0, r.stderr
    assert probe(video)["frames"] == 4
