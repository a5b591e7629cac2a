"""Stage I's training step on the tiny networks: what trains, what stays frozen, the loss algebra, the
conditioning dropouts, the token drop and gradient checkpointing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fake_training_data import ImagePairDataset

from personalive_cli.training.config import TrainConfig
from personalive_cli.training.stage import StepContext
from personalive_cli.training.stage1 import Stage1, drop_bank_tokens, face_weight_mask

NO_DROPOUT = dict(uncond_ratio=0.0, zero_motion_ratio=0.0, zero_pose_ratio=0.0)


def _trainable_by_rule(name: str) -> bool:
    """The official split, written independently of Stage1.configure."""
    net, _, rest = name.partition(".")
    if net == "denoising_unet":
        return ".temporal_modules." not in name
    if net == "reference_unet":
        return not rest.startswith("up_blocks.3.")
    return net in ("pose_guider", "motion_encoder")


@pytest.fixture(scope="module")
def _initial_state(tiny_models):
    return {k: v.clone() for k, v in tiny_models.state_dict().items()}


@pytest.fixture
def models(tiny_models, _initial_state):
    """The session's tiny networks, handed back as they were (weights, modes, no gradients): a deep copy
    would cost seconds per test."""
    yield tiny_models
    tiny_models.load_state_dict(_initial_state)
    tiny_models.denoising_unet.disable_gradient_checkpointing()
    tiny_models.reference_unet.disable_gradient_checkpointing()
    tiny_models.zero_grad(set_to_none=True)
    tiny_models.requires_grad_(False).eval()


@pytest.fixture(scope="module")
def batch2(train_data, tiny_models):
    """Two samples (per-sample timesteps and reference banks); `batch` is the first alone (faster)."""
    cfg = TrainConfig.preset("tiny")
    ds = ImagePairDataset(train_data, **Stage1().dataset_kwargs(cfg, tiny_models))
    return torch.utils.data.default_collate([ds[0], ds[1]])


@pytest.fixture(scope="module")
def batch(batch2):
    return {k: v[:1] for k, v in batch2.items()}


def _step(models, batch, seed: int = 0, **changes):
    stage = Stage1()
    stage.configure(models)
    cfg = dataclasses.replace(TrainConfig.preset("tiny"), **changes)
    torch.manual_seed(seed)
    ctx = StepContext(step=0, micro_step=0, generator=torch.Generator().manual_seed(seed), device=torch.device("cpu"),
                      config=cfg)
    return stage, stage.training_step(models, batch, ctx)


def test_one_step_changes_exactly_the_trainable_parameters(models, batch2):
    before = {n: p.detach().clone() for n, p in models.named_parameters()}
    stage, out = _step(models, batch2, **NO_DROPOUT)
    trainable = {n for n, p in models.named_parameters() if p.requires_grad}
    assert trainable == {n for n in before if _trainable_by_rule(n)}
    assert {n for n, _ in stage.frozen_parameters(models)} == set(before) - trainable
    optimizer = torch.optim.AdamW(stage.trainable_parameters(models), lr=1e-3, weight_decay=1e-2)
    out["loss"].backward()
    graded = {n for n, p in models.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    optimizer.step()
    after = dict(models.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    frozen = set(before) - trainable
    assert not changed & frozen  # VAE, CLIP, keypoint extractor, temporal modules, reference up_blocks.3
    assert any(n.startswith("vae.") for n in frozen) and any(".temporal_modules." in n for n in frozen)
    assert any(n.startswith("reference_unet.up_blocks.3.") for n in frozen)
    assert graded <= changed  # every parameter the loss reaches moved
    groups = {"denoising 2-D": lambda n: n.startswith("denoising_unet.") and ".motion_modules." not in n,
              "motion modules": lambda n: ".motion_modules." in n, "reference": lambda n: n.startswith("reference_unet."),
              "pose guider": lambda n: n.startswith("pose_guider."), "motion encoder": lambda n: n.startswith("motion_encoder.")}
    for group, member in groups.items():
        assert any(member(n) for n in changed & trainable), group
    assert len(changed) > 0.9 * len(trainable)


def test_loss_is_zero_for_a_perfect_noise_prediction(models, batch, monkeypatch):
    """x̂0 = (z_t - √(1-ᾱ) ε̂)/√ᾱ recovers x0 exactly when ε̂ = ε: checks the noising and the conversion."""
    stage = Stage1()
    drawn = {}
    add_noise = stage.scheduler.ddim.add_noise

    def capture(x0, noise, t):
        drawn["noise"] = noise
        return add_noise(x0, noise, t)

    monkeypatch.setattr(stage.scheduler.ddim, "add_noise", capture)
    monkeypatch.setattr(models.denoising_unet, "forward", lambda sample, *a, **k: drawn["noise"][:, :, None])
    stage.configure(models)
    ctx = StepContext(0, 0, torch.Generator().manual_seed(3), torch.device("cpu"), TrainConfig.preset("tiny"))
    out = stage.training_step(models, batch, ctx)
    assert out["loss"] < 1e-8 and out["mse"] < 1e-8


def test_uncond_and_zero_conditions_skip_their_paths(models, batch, monkeypatch):

    def never(*a, **k):
        raise AssertionError("the reference UNet ran on an uncond step")

    monkeypatch.setattr(models.reference_unet, "forward", never)
    _, out = _step(models, batch, uncond_ratio=1.0, zero_motion_ratio=1.0, zero_pose_ratio=1.0)
    assert (out["uncond"], out["zero_motion"], out["zero_pose"]) == (1, 1, 1)
    out["loss"].backward()
    assert all(p.grad is None for p in models.pose_guider.parameters())
    assert all(p.grad is None for p in models.motion_encoder.parameters())
    assert models.denoising_unet.conv_out.weight.grad is not None


def test_face_weight_mask():
    face = torch.zeros(1, 1, 16, 16)
    local = torch.zeros(1, 1, 16, 16)
    face[..., 4:12, 4:12] = 1
    local[..., 6:8, 6:10] = 1  # inside the face
    m = face_weight_mask(face, local, (8, 8))
    assert m.shape == (1, 4, 8, 8) and torch.equal(m[:, 0], m[:, 3])
    assert m[0, 0, 0, 0] == 0 and m[0, 0, 2, 2] == 1 and m[0, 0, 3, 3] == 2 and set(m.unique().tolist()) == {0, 1, 2}


def test_bank_token_drop_keeps_a_random_subset_per_sample():
    tokens = torch.arange(2 * 10 * 3, dtype=torch.float32).reshape(2, 10, 3)
    ctx = StepContext(0, 0, torch.Generator().manual_seed(0), torch.device("cpu"), TrainConfig())
    out = drop_bank_tokens({"a": tokens}, 0.3, ctx)["a"]
    assert out.shape == (2, 7, 3)
    for b in range(2):
        rows = {tuple(r) for r in tokens[b].tolist()}
        kept = [tuple(r) for r in out[b].tolist()]
        assert set(kept) <= rows and len(set(kept)) == 7
    assert {r[0] % 30 for r in out[0].tolist()} != {r[0] % 30 for r in out[1].tolist()}
    assert drop_bank_tokens({"a": tokens}, 0.0, ctx)["a"] is tokens


def test_gradient_checkpointing_gives_the_same_gradients(models, batch):
    """(Also: the same seed draws the same step, so both runs see the same noise, t and token drop.)"""
    grads, losses = [], []
    initial = {k: v.clone() for k, v in models.state_dict().items()}  # (BatchNorm statistics move in train mode)
    for checkpointing in (False, True):
        models.load_state_dict(initial)
        if checkpointing:
            models.denoising_unet.enable_gradient_checkpointing()
            models.reference_unet.enable_gradient_checkpointing()
        _, out = _step(models, batch, seed=1, **NO_DROPOUT)
        out["loss"].backward()
        losses.append(out["loss"].item())
        grads.append({n: p.grad.clone() for n, p in models.named_parameters() if p.grad is not None})
        models.zero_grad(set_to_none=True)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-4, atol=1e-6, msg=n)
