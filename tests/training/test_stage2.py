"""Stage II (training.md §6) on the tiny networks: the no-gradient unroll down the inference ladder with fresh
noise, the reference UNet learning only through the graded pass, the decoded-pixel loss, the timestep-
conditioned discriminator, over-fitting one clip, and `personalive train stage2` as a user types it (export,
a Stage I run as --init, bad inputs, resume)."""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil

import pytest
import torch
from fake_training_data import SPEC, ImagePairDataset, write_dataset
from helpers import invoke, one_error_line
from safetensors.torch import load_file

from personalive_cli.models.scheduler import StreamScheduler
from personalive_cli.training.config import TrainConfig
from personalive_cli.training.init import initial_discriminator
from personalive_cli.training.stage import StepContext
from personalive_cli.training.stage2 import Stage2

LADDER = (999, 666, 333, 0)
NO_DROPOUT = dict(uncond_ratio=0.0, zero_motion_ratio=0.0, zero_pose_ratio=0.0)
TINY = ["--preset", "tiny", "--set", "log_with=none"]
D_TERMS = ("d_loss", "d_real", "d_fake")


def _alphas_cumprod() -> torch.Tensor:
    """ᾱ of the "scaled_linear" schedule, β from 0.00085 to 0.02 over 1000 steps, written out (float64)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.02 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def _tiny_config(**changes) -> TrainConfig:
    return dataclasses.replace(TrainConfig.preset("tiny", "stage2"), **changes)


def _checkpoint(run, step: int, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / name))


def _rows(run) -> tuple[list[str], list[dict]]:
    with (run / "metrics.csv").open() as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def _no_run(path) -> bool:
    return not path.exists() and not [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def _initial_state(tiny_models):
    return {k: v.clone() for k, v in tiny_models.state_dict().items()}


@pytest.fixture
def models(tiny_models, _initial_state):
    """The session's tiny networks, handed back as they were (weights, modes, no gradients)."""
    yield tiny_models
    tiny_models.load_state_dict(_initial_state)
    tiny_models.zero_grad(set_to_none=True)
    tiny_models.requires_grad_(False).eval()


@pytest.fixture(scope="module")
def batch(train_data, tiny_models):
    cfg = _tiny_config()
    ds = ImagePairDataset(train_data, **Stage2().dataset_kwargs(cfg, tiny_models))
    return torch.utils.data.default_collate([ds[0]])


class Recorder:
    """A `StepContext` updater as the runner's, without accelerate: ``backward`` back-propagates the generator
    loss; with a discriminator, its update is made (Adam) and its gradients kept in ``d_grads``."""

    training = True

    def __init__(self, backward: bool = False, discriminator=None):
        self.backward, self.discriminator = backward, discriminator
        self.parallel_grad: list[bool] = []
        self.generator_losses: list[torch.Tensor] = []
        self.d_grads_before: list = []
        self.d_grads: dict[str, torch.Tensor] = {}
        if discriminator is not None:
            self.d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-2)

    def parallel(self, fn, *args, **kwargs):
        self.parallel_grad.append(torch.is_grad_enabled())
        return fn(*args, **kwargs)

    def update_generator(self, loss):
        self.generator_losses.append(loss.detach())
        if self.backward:
            loss.backward()

    def discriminate(self, fake, real, timesteps):
        return self.discriminator(fake.detach(), timesteps), self.discriminator(real, timesteps), None

    def update_discriminator(self, loss):
        d = self.discriminator
        self.d_grads_before = [p.grad for p in d.parameters()]
        loss.backward()
        self.d_grads = {n: p.grad.clone() for n, p in d.named_parameters() if p.grad is not None}
        self.d_optimizer.step()
        self.d_optimizer.zero_grad(set_to_none=True)


class Traced:
    """One Stage II step with every denoising-UNet pass, reference-UNet run, scheduler step and latent-sized
    noise draw of the step context recorded."""

    def __init__(self, models, monkeypatch):
        self.stage = Stage2()
        self.stage.configure(models)
        self.models = models
        self.passes: list[dict] = []  # denoising UNet: input latent, timesteps, output ε̂, grad mode, bank
        self.reference_grad: list[bool] = []
        self.steps: list[dict] = []  # scheduler.step calls
        step = self.stage.scheduler.step

        def record_step(eps, timesteps, sample, noise=None):
            self.steps.append(dict(eps=eps, t=timesteps, z=sample, noise=noise))
            return step(eps, timesteps, sample, noise=noise)

        monkeypatch.setattr(self.stage.scheduler, "step", record_step)

        def on_denoise(module, args, output):
            self.passes.append(dict(z=args[0].detach().clone(), t=args[1].clone(), eps=output.detach().clone(),
                                    grad=torch.is_grad_enabled(), bank=args[5]))

        def on_reference(module, args, output):
            self.reference_grad.append(torch.is_grad_enabled())

        self.decoded: list[torch.Tensor] = []  # what the VAE decoder is given
        decode = models.vae.decode

        def record_decode(z, *args, **kwargs):
            self.decoded.append(z.detach().clone())
            return decode(z, *args, **kwargs)

        monkeypatch.setattr(models.vae, "decode", record_decode)
        self.handles = [models.denoising_unet.register_forward_hook(on_denoise),
                        models.reference_unet.register_forward_hook(on_reference)]

    def run(self, batch, seed: int, updater=None, **changes):
        for record in (self.passes, self.reference_grad, self.steps, self.decoded):
            record.clear()
        self.draws = []
        ctx = StepContext(step=0, micro_step=0, generator=torch.Generator().manual_seed(seed),
                          device=torch.device("cpu"), config=_tiny_config(**changes), updater=updater)
        randn = ctx.randn

        def recording_randn(*shape):
            x = randn(*shape)
            self.draws.append(x)
            return x

        ctx.randn = recording_randn
        torch.manual_seed(seed)
        return self.stage.training_step(self.models, batch, ctx)

    def latent_draws(self) -> list[torch.Tensor]:
        """The context's noise draws of the 5-D latent shape (b, 4, 1, h, w), in order."""
        return [x for x in self.draws if x.ndim == 5]

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.fixture
def traced(models, monkeypatch):
    t = Traced(models, monkeypatch)
    yield t
    t.close()


# ------------------------------------------------------------------------------------------------ the step


def test_unroll_is_the_inference_step_with_fresh_noise_down_the_ladder(traced, batch):
    """n ~ U{1..4}: n − 1 passes without gradients at 999, 666, ... from pure noise, each re-noising x̂0 with
    a fresh draw to the next rung; the graded pass sees exactly the latent those steps give."""
    abar = _alphas_cumprod()
    seen = set()
    for seed in range(60):
        out = traced.run(batch, seed, Recorder(), **NO_DROPOUT)
        n = int(out["unroll"])
        seen.add(n)
        passes = traced.passes
        assert [int(p["t"]) for p in passes] == list(LADDER[:n])
        assert [p["grad"] for p in passes] == [False] * (n - 1) + [True]
        draws = traced.latent_draws()
        assert len(draws) == n  # the starting noise, then one fresh draw per re-noising
        assert torch.equal(passes[0]["z"], draws[0])
        assert [s["noise"] is None for s in traced.steps] == [False] * (n - 1) + [True]
        for i in range(n - 1):
            s = traced.steps[i]
            assert s["noise"] is draws[i + 1]
            assert torch.equal(s["eps"], passes[i]["eps"]) and torch.equal(s["z"], passes[i]["z"])
            t, t_next = LADDER[i], LADDER[i + 1]
            z, eps = passes[i]["z"].double(), passes[i]["eps"].double()
            x0 = (z - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
            expected = abar[t_next].sqrt() * x0 + (1 - abar[t_next]).sqrt() * draws[i + 1].double()
            torch.testing.assert_close(passes[i + 1]["z"].double(), expected, rtol=1e-5, atol=1e-5)
            # ... which is the inference scheduler's step with the noise injected
            inference = StreamScheduler().step(passes[i]["eps"], torch.tensor([t]), passes[i]["z"],
                                               noise=draws[i + 1])[0]
            assert torch.equal(passes[i + 1]["z"], inference)
        for a in range(n):
            for b in range(a):
                assert not torch.allclose(draws[a], draws[b])  # fresh noise every time
        if seen == {1, 2, 3, 4}:
            break
    assert seen == {1, 2, 3, 4}


def test_evaluation_runs_the_full_ladder_and_scores_the_decoded_prediction(traced, batch, models):
    """Without an updater (the validation loss) n = 4 and there is no adversarial term nor D update; the terms
    are the decoded-pixel MSE, the face-weighted MSE and 2 LPIPS of x̂0 predicted at t = 0, recomputed here by
    hand (x̂0 from the recorded last pass, decoded by the frozen VAE)."""
    out = traced.run(batch, 5, None, **NO_DROPOUT, bank_drop_ratio=0.0)
    assert int(out["unroll"]) == 4 and [int(p["t"]) for p in traced.passes] == list(LADDER)
    assert math.isnan(out["adversarial"]) and all(math.isnan(out[k]) for k in D_TERMS)
    last = traced.passes[-1]
    abar0 = _alphas_cumprod()[0]
    x0 = ((last["z"].double() - (1 - abar0).sqrt() * last["eps"].double()) / abar0.sqrt()).float()
    assert len(traced.decoded) == 1
    torch.testing.assert_close(traced.decoded[0], x0[:, :, 0] / models.vae.config.scaling_factor,
                               rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        image = models.vae.decode(x0[:, :, 0] / models.vae.config.scaling_factor).sample.float()
        target = batch["target"]
        mse = (image - target).square().mean()
        weight = batch["face_mask"] + batch["local_mask"]  # 1 on the face, 2 on eyes and mouth
        face = ((image - target) * weight).square().mean()
        lpips = traced.stage.objective.lpips(image, target)
    torch.testing.assert_close(out["mse"], mse, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["face"], face, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["lpips"], lpips, rtol=1e-4, atol=1e-6)
    assert face > 0 and lpips > 0
    torch.testing.assert_close(out["loss"], mse + face + 2 * lpips, rtol=1e-4, atol=1e-6)


def test_the_reference_unet_learns_only_through_the_graded_pass(traced, batch, models):
    """The reference UNet runs once without gradients for the no-gradient passes (which all reuse that bank)
    and once more with gradients for the graded pass; its gradients come from there (up_blocks.3 stays
    frozen); an uncond step never runs it."""
    for seed in range(40):  # (forward only, until a step unrolls at least two passes before the graded one)
        n = int(traced.run(batch, seed, Recorder(), **NO_DROPOUT)["unroll"])
        assert traced.reference_grad == ([False, True] if n > 1 else [True])
        if n >= 3:
            break
    assert n >= 3
    models.zero_grad(set_to_none=True)
    recorder = Recorder(backward=True)
    out = traced.run(batch, seed, recorder, **NO_DROPOUT)  # the same draws: the same n
    assert int(out["unroll"]) == n
    assert traced.reference_grad == [False, True]  # not re-run in the later no-gradient passes
    assert recorder.parallel_grad == [True]  # the graded pass, inside the data-parallel wrapper
    banks = [p["bank"] for p in traced.passes]
    assert all(b is banks[0] for b in banks[:-1]) and banks[-1] is not banks[0]
    assert len(recorder.generator_losses) == 1
    grads = {name: p.grad for name, p in models.reference_unet.named_parameters()}
    frozen = [name for name in grads if name.startswith("up_blocks.3.")]
    assert frozen and all(grads[name] is None for name in frozen)
    trained = [name for name in grads if not name.startswith("up_blocks.3.")]
    assert all(grads[name] is not None for name in trained)
    assert sum(bool(grads[name].abs().sum() > 0) for name in trained) > 0.9 * len(trained)
    assert models.denoising_unet.conv_in.weight.grad.abs().sum() > 0  # through the decoder and the graded pass
    assert all(p.grad is None for p in models.vae.parameters())  # the decoder passes gradients, frozen

    traced.run(batch, 0, Recorder(), uncond_ratio=1.0)
    assert traced.reference_grad == [] and all(p["bank"] is None for p in traced.passes)


def test_the_discriminator_starts_independent_of_t_and_its_projections_learn(traced, batch):
    """D's timestep projections start at zero (D(x, 999) = D(x, 0)); the generator's adversarial pass leaves
    D without gradients; D's update, at the graded pass's timestep, reaches the projections."""
    d = initial_discriminator(_tiny_config())
    projections = [p for name, p in d.named_parameters() if name.startswith("time_emb_proj.")]
    assert projections and all(not p.any() for p in projections)
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(d(x, torch.full((4,), 999)), d(x, torch.zeros(4, dtype=torch.long)))
    calls = []
    hook = d.register_forward_hook(lambda m, args, out: calls.append(
        (torch.as_tensor(args[1]).clone(), out.detach().clone(), any(p.requires_grad for p in m.parameters()))))
    recorder = Recorder(backward=True, discriminator=d)
    out = traced.run(batch, 1, recorder, **NO_DROPOUT)
    hook.remove()
    t = LADDER[int(out["unroll"]) - 1]
    assert [c[0].tolist() for c in calls] == [[t]] * 3  # generator's term, then D's fake and real
    assert [c[2] for c in calls] == [False, True, True]  # D frozen inside the generator's loss
    assert all(g is None for g in recorder.d_grads_before)  # ... so the generator step left it no gradient
    (g_fake,), (d_fake,), (d_real,) = (c[1].tolist() for c in calls)
    assert out["adversarial"].item() == pytest.approx(_softplus(-g_fake), rel=1e-5)
    assert out["d_fake"].item() == pytest.approx(d_fake, rel=1e-5) and d_fake == pytest.approx(g_fake, rel=1e-5)
    assert out["d_loss"].item() == pytest.approx(_softplus(d_fake) + _softplus(-d_real), rel=1e-5)
    assert out["loss"].item() == pytest.approx((out["mse"] + out["face"] + 2 * out["lpips"]
                                                + 0.05 * out["adversarial"]).item(), rel=1e-5)
    for name, p in d.named_parameters():
        if name.startswith("time_emb_proj."):
            assert recorder.d_grads[name].abs().sum() > 0, name  # temb ≠ 0, so the zero weights get gradients
            assert p.abs().sum() > 0, name  # ... and moved
    with torch.no_grad():
        assert not torch.equal(d(x, torch.full((4,), 999)), d(x, torch.zeros(4, dtype=torch.long)))


# ------------------------------------------------------------------------------------------------ runs


def test_cli_run_metrics_checkpoint_and_export(stage2_run, tiny_models, tmp_path):
    columns, rows = _rows(stage2_run)
    for column in ("loss", "mse", "face", "lpips", "adversarial", *D_TERMS, "unroll", "grad_norm", "d_grad_norm",
                   "val_loss"):
        assert column in columns
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert math.isfinite(float(rows[0]["val_loss"])) and math.isfinite(float(rows[3]["val_loss"]))
    for r in rows[1:]:
        v = {k: float(x) for k, x in r.items() if x not in ("", None)}
        assert all(math.isfinite(v[k]) for k in ("adversarial", *D_TERMS, "grad_norm", "d_grad_norm"))
        assert v["unroll"] in (1, 2, 3, 4)
        assert v["loss"] == pytest.approx(v["mse"] + v["face"] + 2 * v["lpips"] + 0.05 * v["adversarial"], rel=1e-4)
        assert v["d_loss"] == pytest.approx(_softplus(v["d_fake"]) + _softplus(-v["d_real"]), rel=1e-4)
    # the checkpoint: the Stage I networks, and the discriminator whose projections have learnt
    trained = _checkpoint(stage2_run, 3)
    assert {k.split(".")[1] for k in trained} == set(Stage2.trained_modules)
    d = _checkpoint(stage2_run, 3, "model_1.safetensors")
    assert d and all(k.startswith("discriminator.") for k in d)
    projections = [k for k in d if k.startswith("discriminator.time_emb_proj.") and k.endswith(".weight")]
    assert projections and all(d[k].abs().sum() > 0 for k in projections)
    base = tiny_models.reference_unet.state_dict()
    assert not torch.equal(trained["trained.reference_unet.conv_in.weight"], base["conv_in.weight"])
    out = tmp_path / "exported"
    r = invoke("train", "export", stage2_run, out)
    assert r.returncode == 0, r.stderr
    r = invoke("weights", "check", out)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("setting, expected", [
    ("lpips_vgg=/nonexistent/vgg16.pth", "LPIPS-VGG: /nonexistent/vgg16.pth not found"),
    ("discriminator_init=/nonexistent/d.pth", "discriminator weights /nonexistent/d.pth not found"),
    ("size=192", "power-of-two size"),
    ("batch_size=6", "needs batch_size 4 or less, or a multiple of 4, got 6"),  # D's minibatch-stddev groups
])
def test_bad_inputs(setting, expected, train_data, tiny_weights, tmp_path):
    out = tmp_path / "RUN"
    line = one_error_line(invoke("train", "stage2", train_data, "--output", out, "--init", tiny_weights, *TINY,
                                 "--set", setting))
    assert expected in line
    assert _no_run(out)


def test_without_gan_there_is_no_discriminator(train_data, tiny_weights, tmp_path):
    run = tmp_path / "RUN"
    r = invoke("train", "stage2", train_data, "--output", run, "--init", tiny_weights, "--max-steps", 1, *TINY,
               "--set", "gan=false", "--set", "validate_every=0")
    assert r.returncode == 0, r.stderr
    columns, rows = _rows(run)
    assert not {"adversarial", *D_TERMS, "d_grad_norm"} & set(columns)
    assert {"loss", "mse", "face", "lpips", "grad_norm"} <= set(columns)
    v = {k: float(x) for k, x in rows[-1].items() if x}
    assert v["loss"] == pytest.approx(v["mse"] + v["face"] + 2 * v["lpips"], rel=1e-4)
    assert sorted(p.name for p in (run / "checkpoints" / "step-00000001").glob("model*")) == ["model.safetensors"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, demo_data, tiny_run):
    """6 steps of the same run as `stage2_run` (conftest), validation at 0 and 6 only."""
    run = tmp_path_factory.mktemp("stage2") / "straight"
    r = invoke("train", "stage2", demo_data, "--output", run, "--init", tiny_run, "--max-steps", 6, *TINY,
               "--set", "checkpoint_every=3", "--set", "validate_every=6")
    assert r.returncode == 0, r.stderr
    return run


@pytest.mark.slow
def test_resume_equals_the_uninterrupted_run(stage2_run, straight_run, demo_data, tmp_path):
    """The 3-step run (validation at 0 and 3) resumed to 6 equals 6 straight steps (validation at 0 and 6):
    the trained networks and the discriminator."""
    split = tmp_path / "split"
    shutil.copytree(stage2_run, split)
    r = invoke("train", "stage2", demo_data, "--output", split, "--resume", "latest", "--max-steps", 6,
               "--set", "validate_every=0")
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stderr and "trained to step 6" in r.stderr
    for name in ("model.safetensors", "model_1.safetensors"):
        a, b = _checkpoint(split, 6, name), _checkpoint(straight_run, 6, name)
        assert a.keys() == b.keys()
        assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6, name
    assert [int(r["step"]) for r in _rows(split)[1]] == [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_six_steps_lower_the_validation_loss(straight_run):
    """The quick version of the over-fitting test below: the validation loss (fixed samples and draws, the
    full ladder, no dropout) after 6 steps of the tiny preset, against the start."""
    rows = {int(r["step"]): r for r in _rows(straight_run)[1]}
    before, after = float(rows[0]["val_loss"]), float(rows[6]["val_loss"])
    assert math.isfinite(after) and after <= 0.9 * before


# ------------------------------------------------------------------------------------------------ over-fitting


@pytest.fixture(scope="module")
def one_clip(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("one_clip") / "DATA", n_clips=1)


def _overfit(data, out, steps: int, seed: int = 12580) -> tuple[float, float, list[dict]]:
    from personalive_cli.training.runner import Runner

    config = TrainConfig.preset("tiny", "stage2").updated(
        {"max_steps": steps, "validate_every": steps, "checkpoint_every": steps, "log_with": "none", "seed": seed,
         "dataset": SPEC}, "test")
    Runner(Stage2(), data, out, config).run()
    rows = {int(r["step"]): r for r in _rows(out)[1]}
    return float(rows[0]["val_loss"]), float(rows[steps]["val_loss"]), [rows[s] for s in range(1, steps + 1)]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_30_steps_on_one_clip_lower_the_loss(one_clip, tmp_path, seed):
    """The validation loss (fixed samples and draws, full ladder) and the training pixel MSE before and after
    30 steps of the tiny preset on one clip."""
    before, after, rows = _overfit(one_clip, tmp_path / "RUN", 30, seed)
    mse = [float(r["mse"]) for r in rows]
    first, last = sum(mse[:5]) / 5, sum(mse[-5:]) / 5
    print(f"seed {seed}: validation loss {before:.4g} -> {after:.4g}; pixel MSE {first:.4g} -> {last:.4g}")
    assert math.isfinite(after) and after <= 0.8 * before
    assert last < first
