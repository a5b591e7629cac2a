"""Stage III (sliding training of the temporal modules) on the tiny networks: what trains, the rollout's
write-back between windows, the no-sliding ablation, chunk-causal temporal attention, the loss going down,
and the CLI as a user types it (from a Stage II run, export, weights check, bad inputs)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import torch
from fake_training_data import write_dataset
from helpers import invoke, one_error_line
from safetensors.torch import load_file

import personalive_cli.training.stage3 as stage3_module
from personalive_cli.models.attention_processor import ChunkCausalAttnProcessor
from personalive_cli.pipeline.engine import window_timesteps
from personalive_cli.training.config import TrainConfig
from personalive_cli.training.datasets import VideoDataset
from personalive_cli.training.stage import StepContext
from personalive_cli.training.stage3 import Stage3

NO_DROPOUT = dict(uncond_ratio=0.0, zero_motion_ratio=0.0, zero_pose_ratio=0.0)
TEMPORAL = ".temporal_modules."
NETWORKS = ("vae", "image_encoder", "keypoint_extractor", "reference_unet", "pose_guider", "motion_encoder",
            "denoising_unet")


def _config(**changes) -> TrainConfig:
    return dataclasses.replace(TrainConfig.preset("tiny", "stage3"), **changes)


def _checkpoint(run: Path, step: int, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / name))


def _metrics(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").open()))


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def _initial_state(tiny_models):
    return ({k: v.clone() for k, v in tiny_models.state_dict().items()},
            tiny_models.denoising_unet.attn_processors)


@pytest.fixture
def models(tiny_models, _initial_state):
    """The session's tiny networks, handed back as they were (weights, modes, attention processors, no
    gradients, no checkpointing): a deep copy would cost seconds per test."""
    yield tiny_models
    state, processors = _initial_state
    tiny_models.load_state_dict(state)
    tiny_models.denoising_unet.set_attn_processor(processors)
    tiny_models.vae.disable_gradient_checkpointing()
    tiny_models.zero_grad(set_to_none=True)
    tiny_models.requires_grad_(False).eval()


def _batch(data: Path, models, frames: int) -> dict:
    cfg = _config(sequence_frames=frames)
    ds = VideoDataset(data, **Stage3().dataset_kwargs(cfg, models))
    return torch.utils.data.default_collate([ds[0]])


@pytest.fixture(scope="module")
def batch(train_data, tiny_models) -> dict:
    """One 24-frame sequence (the tiny preset: windows 0, 1, 2; window 0 graded)."""
    return _batch(train_data, tiny_models, 24)


class _Recorder(StepContext):
    """A step context that keeps every normal draw (they all come from ``generator``, in order)."""

    def randn(self, *shape: int) -> torch.Tensor:
        x = super().randn(*shape)
        self.draws.append(x.clone())
        return x


def _context(cfg: TrainConfig, seed: int = 0, updater=None) -> _Recorder:
    torch.manual_seed(seed)
    ctx = _Recorder(step=0, micro_step=0, generator=torch.Generator().manual_seed(seed), device=torch.device("cpu"),
                    config=cfg, updater=updater)
    ctx.draws = []
    return ctx


class _Optimise:
    """The runner's part for a self-updating stage, in plain torch: backward and a real AdamW step."""

    training = True
    discriminator = None

    def __init__(self, params, log: list | None = None):
        params = list(params)
        self.optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2) if params else None
        self.log = log if log is not None else []

    def parallel(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def update_generator(self, loss: torch.Tensor) -> None:
        self.log.append("update")
        if loss.requires_grad:
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def discriminate(self, *args):
        raise AssertionError("no discriminator in this test")

    update_discriminator = discriminate


class _NoLPIPS(torch.nn.Module):
    """LPIPS-VGG (a random VGG trunk: a second per graded window on this machine) is beside the point of the
    rollout tests."""

    def forward(self, pred, target):
        return pred.new_zeros(())


# ---------------------------------------------------------------------------------------------- 1. what trains


def test_one_step_changes_only_the_temporal_modules(models, batch):
    stage = Stage3()
    cfg = _config(**NO_DROPOUT)
    stage.setup(cfg)
    stage.configure(models)
    before = {k: v.clone() for k, v in models.state_dict().items()}
    params = dict(models.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable == {n for n in params if n.startswith("denoising_unet.") and TEMPORAL in n}
    assert {n for n, _ in stage.frozen_parameters(models)} == set(params) - trainable
    updates = _Optimise(stage.trainable_parameters(models))
    out = stage.training_step(models, batch, _context(cfg, updater=updates))
    assert updates.log == ["update"] and torch.isfinite(out["loss"])  # 24 frames: window 0 of 3 is graded

    after = models.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == trainable  # every temporal parameter moved, nothing else (buffers included)
    frozen = set(before) - changed
    groups = {net: (lambda n, net=net: n.startswith(f"{net}.")) for net in NETWORKS[:-1]}
    groups["denoising 2-D"] = lambda n: (n.startswith("denoising_unet.") and TEMPORAL not in n
                                        and ".motion_modules." not in n)
    groups["motion modules"] = lambda n: ".motion_modules." in n
    for group, member in groups.items():  # the check above covered every network
        assert sum(map(member, frozen)) > 5, group


def test_forty_frames_grade_windows_0_3_6_with_one_update_each(models, train_data):
    """The official length: seven windows, every third graded (with gradients), each followed by its optimiser
    step before the next window runs."""
    stage = Stage3()
    cfg = _config(sequence_frames=40, **NO_DROPOUT)
    stage.setup(cfg)
    stage.objective.lpips = _NoLPIPS()
    stage.configure(models)
    models.requires_grad_(False)  # (no backward pass: the order of windows and updates is the point)
    log = []
    stage.on_window = lambda i, x: log.append(i)
    unet, forward = models.denoising_unet, models.denoising_unet.forward

    def spy(*args, **kwargs):
        log.append("grad" if torch.is_grad_enabled() else "no_grad")
        return forward(*args, **kwargs)

    unet.forward = spy
    try:
        stage.training_step(models, _batch(train_data, models, 40), _context(cfg, updater=_Optimise([], log)))
    finally:
        del unet.forward
    graded = [0, "grad", "update"]
    plain = ["no_grad"]
    assert log == [*graded, 1, *plain, 2, *plain, 3, *graded[1:], 4, *plain, 5, *plain, 6, *graded[1:]]


# ---------------------------------------------------------------------------------------------- 2-3. rollout


def _rollout(models, batch, sliding: bool, shift: float = 0.0) -> dict:
    """One forward-only step (seed 0); returns each window's input, the UNet outputs, every normal draw and the
    ground-truth latents. ``shift`` is added to every UNet output (a different prediction, the same draws).
    The VAE encoder's sample is its mean here (no draw), so the latents are known by hand."""
    stage = Stage3()
    cfg = _config(sliding=sliding, **NO_DROPOUT)
    stage.setup(cfg)
    stage.objective.lpips = _NoLPIPS()
    stage.configure(models)
    models.requires_grad_(False)
    windows, eps = {}, []
    stage.on_window = lambda i, x: windows.__setitem__(i, x.clone())
    unet, forward = models.denoising_unet, models.denoising_unet.forward

    def spy(*args, **kwargs):
        out = forward(*args, **kwargs) + shift
        eps.append(out.clone())
        return out

    def vae_mean(vae, images, ctx):
        return vae.encode(images).latent_dist.mean * vae.config.scaling_factor

    ctx = _context(cfg)
    unet.forward = spy
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(stage3_module, "vae_sample", vae_mean)
            stage.training_step(models, batch, ctx)
    finally:
        del unet.forward
    vae = models.vae
    with torch.no_grad():
        frames = batch["frames"][0]  # (n, 3, S, S): all at once, not in the stage's slices of 10
        latents = (vae.encode(frames).latent_dist.mean * vae.config.scaling_factor).transpose(0, 1)[None]
    return {"windows": windows, "eps": eps, "draws": ctx.draws, "latents": latents,
            "alphas": stage.scheduler.alphas_cumprod}


@pytest.fixture(scope="module")
def rollouts(tiny_models, batch):
    """{(sliding, shifted): rollout} for the four combinations (same seed, same batch)."""
    tiny_models.requires_grad_(False)
    try:
        return {(sliding, shift != 0): _rollout(tiny_models, batch, sliding, shift)
                for sliding in (True, False) for shift in (0.0, 0.5)}
    finally:
        tiny_models.vae.disable_gradient_checkpointing()
        tiny_models.eval()


def _abar(alphas: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ᾱ_t per frame as (1, 1, f, 1, 1); 1 below t = 0 (the step past the clean end)."""
    a = torch.where(t >= 0, alphas[t.clamp(min=0)], torch.ones(t.shape))
    return a.view(1, 1, -1, 1, 1)


def _noised(alphas, x0, noise, t):
    a = _abar(alphas, t)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def test_sliding_buffer_and_write_back_between_windows(rollouts):
    r = rollouts[True, False]
    latents, alphas, windows, eps = r["latents"], r["alphas"], r["windows"], r["eps"]
    n = latents.shape[2]
    assert sorted(windows) == [0, 1, 2] and len(eps) == 3
    full = [d for d in r["draws"] if d.shape == latents.shape]
    fresh = [d for d in r["draws"] if d.shape[2] == 16]
    assert len(full) == 1 and len(fresh) == 3  # the buffer's noise, then one fresh draw per window
    noise = full[0]
    t = window_timesteps()
    assert t.tolist() == [0] * 4 + [333] * 4 + [666] * 4 + [999] * 4

    # The initial buffer: frames 0-11 the ground truth noised to 0 / 333 / 666, frames 12-15 pure noise.
    torch.testing.assert_close(windows[0][:, :, :12], _noised(alphas, latents[:, :, :12], noise[:, :, :12], t[:12]))
    assert torch.equal(windows[0][:, :, 12:], noise[:, :, 12:16])

    # Window i+1 = chunks 2-4 of window i's write-back (x̂0 re-noised one rung lower with the fresh draw)
    # followed by the buffer's next chunk of pure noise.
    for i in range(n // 4 - 4):
        x, e = windows[i], eps[i]
        a_t = _abar(alphas, t)
        x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
        renoised = _noised(alphas, x0, fresh[i], t - 333)
        assert torch.equal(renoised[:, :, :4], x0[:, :, :4])  # chunk 1 comes out clean
        expected = torch.cat([renoised[:, :, 4:], noise[:, :, 16 + 4 * i:20 + 4 * i]], dim=2)
        torch.testing.assert_close(windows[i + 1], expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(windows[i + 1][:, :, 12:], noise[:, :, 16 + 4 * i:20 + 4 * i])
        # (not the ground truth noised afresh: the next window is built from this window's prediction)
        assert not torch.allclose(windows[i + 1][:, :, :4], _noised(alphas, latents[:, :, 4 * i + 4:4 * i + 8],
                                                                     fresh[i][:, :, 4:8], t[:4]), atol=1e-3)


def test_without_sliding_every_window_is_built_from_the_ground_truth(rollouts):
    r = rollouts[False, False]
    latents, alphas, windows = r["latents"], r["alphas"], r["windows"]
    t = window_timesteps()
    draws = [d for d in r["draws"] if d.shape[2] == 16]
    assert sorted(windows) == [0, 1, 2]
    for i, x in windows.items():  # the window's frames of the ground truth, noised with one of the step's draws
        built = [d for d in draws if torch.allclose(x, _noised(alphas, latents[:, :, 4 * i:4 * i + 16], d, t),
                                                    rtol=1e-5, atol=1e-5)]
        assert len(built) == 1, i
    # Another prediction changes no window's input without sliding, but every later window's with it.
    shifted = rollouts[False, True]["windows"]
    assert all(torch.equal(shifted[i], windows[i]) for i in windows)
    sliding, sliding_shifted = rollouts[True, False]["windows"], rollouts[True, True]["windows"]
    assert torch.equal(sliding_shifted[0], sliding[0])
    for i in (1, 2):
        assert not torch.allclose(sliding_shifted[i][:, :, :12], sliding[i][:, :, :12], atol=1e-2), i
        assert torch.equal(sliding_shifted[i][:, :, 12:], sliding[i][:, :, 12:])  # the pure-noise chunk


# ---------------------------------------------------------------------------------------------- 6. chunk-causal


def _unet_inputs(unet, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    sample = torch.randn(1, 4, 16, 8, 8, generator=g)
    clip = torch.randn(1, 1, cfg.cross_attention_dim, generator=g)
    motion = torch.randn(1, 16, cfg.num_motion_tokens, cfg.motion_token_dim, generator=g)
    return sample, clip, motion


def test_chunk_causal_attention_hides_later_chunks(models):
    unet = models.denoising_unet
    sample, clip, motion = _unet_inputs(unet)
    t = window_timesteps()

    @torch.no_grad()
    def run(x):
        return unet(x, t, clip, motion)

    default = run(sample)
    unet.set_temporal_attention("chunk_causal")
    assert any(isinstance(p, ChunkCausalAttnProcessor) for p in unet.attn_processors.values())
    causal = run(sample)
    assert not torch.allclose(causal, default, atol=1e-3)  # the mask matters (frames 0-11 see less)
    perturbed = {}
    for k in (1, 2, 3):  # perturb chunk k: chunks before it are untouched, chunk k itself changes
        x = sample.clone()
        x[:, :, 4 * k:4 * k + 4] += torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(k))
        perturbed[k] = x
        out = run(x)
        torch.testing.assert_close(out[:, :, :4 * k], causal[:, :, :4 * k], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, :, 4 * k:4 * k + 4], causal[:, :, 4 * k:4 * k + 4], atol=1e-3)
    unet.set_temporal_attention("bidirectional")
    assert torch.equal(run(sample), default)  # bidirectional is the default processor's result
    out = run(perturbed[3])  # and there every frame sees frames 12-15
    assert not torch.allclose(out[:, :, :12], default[:, :, :12], atol=1e-4)


@pytest.mark.slow
def test_a_chunk_causal_run_trains(tmp_path, train_data, tiny_weights, monkeypatch):
    calls = []
    call = ChunkCausalAttnProcessor.__call__

    def counted(self, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return call(self, *args, **kwargs)

    monkeypatch.setattr(ChunkCausalAttnProcessor, "__call__", counted)
    run = tmp_path / "RUN"
    r = invoke("train", "stage3", train_data, "--output", run, "--init", tiny_weights, "--preset", "tiny",
               "--max-steps", 1, "--set", "temporal_attention=chunk_causal", "--set", "validate_every=0")
    assert r.returncode == 0, r.stderr
    assert "trained to step 1" in r.stderr
    assert True in calls and False in calls  # the graded window and the others ran through the mask
    base = torch.load(tiny_weights / "personalive" / "temporal_module.pth")
    after = {k.removeprefix("trained.denoising_unet."): v for k, v in _checkpoint(run, 1).items()}
    assert after.keys() == base.keys()
    params = [k for k in base if not k.endswith(".pe")]
    assert sum(not torch.equal(after[k], base[k]) for k in params) > 0.9 * len(params)


# ---------------------------------------------------------------------------------------------- 5. the CLI


def test_cli_run_from_stage2_export_and_check(stage3_run, stage2_run, tmp_path, tiny_models):
    # Validation strips of the 4-step streaming engine at the start and the end.
    assert {p.name for p in (stage3_run / "validation").iterdir()} == {"step-00000000.png", "step-00000002.png"}
    # The checkpoint holds the temporal modules and nothing else.
    ckpt = _checkpoint(stage3_run, 2)
    temporal = {f"trained.denoising_unet.{k}" for k in tiny_models.denoising_unet.state_dict() if TEMPORAL in k}
    assert temporal and ckpt.keys() == temporal

    # The run started from the Stage II run's trained networks...
    base = stage3_run / "base" / "personalive"
    base_files = {stem: torch.load(base / f"{stem}.pth") for stem in ("denoising_unet", "temporal_module",
                                                                      "reference_unet", "pose_guider",
                                                                      "motion_encoder")}
    stage2 = _checkpoint(stage2_run, 3)
    assert stage2
    for key, value in stage2.items():
        net, _, name = key.removeprefix("trained.").partition(".")
        stem = "temporal_module" if TEMPORAL in name else net
        assert torch.equal(base_files[stem][name], value), key
    # ... and its discriminator (trained by Stage II, so not the random one a run starts without it).
    from personalive_cli.training.init import initial_discriminator

    d2 = _checkpoint(stage2_run, 3, "model_1.safetensors")
    d3 = _checkpoint(stage3_run, 2, "model_1.safetensors")
    assert d2 and d3.keys() == d2.keys() and all(torch.equal(d3[k], d2[k]) for k in d2)
    torch.manual_seed(_config().seed)
    fresh = {f"discriminator.{k}": v for k, v in initial_discriminator(_config()).state_dict().items()}
    assert fresh.keys() == d2.keys() and not all(torch.equal(fresh[k], d2[k]) for k in d2)

    # Export: the base with a new temporal_module.pth; weights check passes.
    out = tmp_path / "OUT"
    r = invoke("train", "export", stage3_run, out)
    assert r.returncode == 0, r.stderr
    r = invoke("weights", "check", out)
    assert r.returncode == 0, r.stdout + r.stderr
    exported = torch.load(out / "personalive" / "temporal_module.pth")
    assert exported.keys() == base_files["temporal_module"].keys()
    assert all(torch.equal(exported[k], ckpt[f"trained.denoising_unet.{k}"]) for k in exported)
    moved = [k for k in exported if not torch.equal(exported[k], base_files["temporal_module"][k])]
    assert len(moved) > 0.9 * len([k for k in exported if not k.endswith(".pe")])
    for path in sorted((stage3_run / "base").rglob("*")):  # every other file: the same tensors as the base
        if path.suffix not in (".pth", ".safetensors") or path.name == "temporal_module.pth":
            continue
        other = out / path.relative_to(stage3_run / "base")
        a, b = ((torch.load(p) if p.suffix == ".pth" else load_file(str(p))) for p in (path, other))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path.name


def test_cli_run_metrics(stage3_run):
    """Every step's loss is its terms' sum (the Stage II objective); the validation loss went down over the
    two steps (the fast sanity check; the 20-step run is `test_twenty_steps_lower_the_loss`)."""
    rows = _metrics(stage3_run)
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    cfg = _config()
    for r in rows[1:]:
        v = {k: float(x) for k, x in r.items() if x}
        expected = v["mse"] + v["face"] + cfg.lpips_weight * v["lpips"] + cfg.adversarial_weight * v["adversarial"]
        assert v["loss"] == pytest.approx(expected, rel=1e-4)
        assert v["grad_norm"] > 0 and v["d_grad_norm"] != v["d_grad_norm"]  # (no D update: NaN)
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])


# ---------------------------------------------------------------------------------------------- 4. learning


@pytest.mark.slow
def test_twenty_steps_lower_the_loss(tmp_path):
    data = write_dataset(tmp_path / "DATA", n_clips=1)
    from personalive_cli.training.runner import Runner

    cfg = _config(max_steps=20, validate_every=20, checkpoint_every=20, log_with="none")
    result = Runner(Stage3(), data, tmp_path / "RUN", cfg).run()
    assert result.step == 20
    rows = _metrics(tmp_path / "RUN")
    first, last = float(rows[0]["val_loss"]), float(rows[-1]["val_loss"])
    assert last < 0.95 * first, (first, last)
    mse = [float(r["mse"]) for r in rows[1:]]
    assert sum(mse[-5:]) < sum(mse[:5])


# ---------------------------------------------------------------------------------------------- 7. bad input


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, train_data, tiny_weights):
    run = tmp_path / "RUN"
    args = ["train", "stage3", train_data, "--output", run, "--init", tiny_weights, "--preset", "tiny",
            "--max-steps", 1]
    line = one_error_line(invoke(*args, "--set", "sequence_frames=18"))
    assert "sequence_frames" in line and "18" in line
    assert not run.exists()
    line = one_error_line(invoke(*args, "--set", "gradient_accumulation_steps=2"))
    assert "stage3" in line and "accumulat" in line
    assert not run.exists()
