"""The generic training runner: accelerate, the run folder, checkpoints and resume, metrics, validation.

Works for any `Stage` (see `personalive_cli.training.stage`). ``Runner(stage, data, output, config).run()``
trains in this process; under ``accelerate launch`` (or ``torchrun``) every process runs the same call and
they train data-parallel (DDP), with process 0 writing the run folder.

Reproducibility and resume. Optimiser step s, micro-batch a of process r reads the dataset's global sample
numbers k = (m * world + r) * batch + j with m = s * accumulation + a, and seeds every random draw of the
step from (seed, m, r) (`StepContext`). With the model, optimiser and scaler state that accelerate saves, a
run resumed from a checkpoint therefore computes exactly what the uninterrupted run computes (bit for bit
on the same hardware, software and process count; data-loader workers do not matter).

Interruption. SIGINT (Ctrl-C) or SIGTERM: the current step finishes, a checkpoint is written and ``run``
returns with ``interrupted=True`` (a second Ctrl-C aborts at once; the previous checkpoint stays).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from personalive_cli.errors import UserError
from personalive_cli.training.config import RESUMABLE_CHANGES, TrainConfig, read_yaml, write_yaml
from personalive_cli.training.datasets import GlobalSampler, worker_context
from personalive_cli.training.run_folder import (
    MODEL_FILE,
    TRACKER_DIR,
    TRAINER_STATE,
    MetricsLog,
    RunFolder,
    check_new_run,
    create_run,
    open_run,
    step_name,
)
from personalive_cli.training.stage import Stage, StepContext, step_seed

log = logging.getLogger(__name__)

# Global sample numbers of the validation-loss samples: far beyond any training run's (a fixed draw of pairs).
VALIDATION_SAMPLES = 10**12


@dataclass
class RunResult:
    run: Path
    step: int  # the run's optimiser steps so far
    interrupted: bool
    checkpoint: Path | None
    skipped: dict[str, int] = field(default_factory=dict)
    validation: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    start_step: int | None = None  # where this call started (None: it trained nothing)


class _StepModule(nn.Module):
    """What data-parallel training wraps: the trained networks as children (so DDP synchronises their
    gradients and accelerate checkpoints them). Its forward pass runs any function of the stage (the whole
    ``training_step``, or the graded part of a self-updating one). The frozen networks are not registered,
    so DDP never broadcasts them."""

    def __init__(self, models, stage: Stage):
        super().__init__()
        self.trained = nn.ModuleDict({name: getattr(models, name) for name in stage.trained_modules})

    def forward(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


class _DiscriminatorStep(nn.Module):
    """What data-parallel training wraps for the discriminator: one forward pass gives the logits of the
    (detached) generated and the real images, and the R1 penalty on the real ones when asked for, so one
    backward pass follows each forward pass (as DDP requires)."""

    def __init__(self, discriminator: nn.Module, r1: bool):
        super().__init__()
        self.discriminator, self.r1 = discriminator, r1

    def forward(self, fake: torch.Tensor, real: torch.Tensor, timesteps):
        from personalive_cli.training.losses import r1_penalty

        fake_logits = self.discriminator(fake.detach(), timesteps)
        if not self.r1:
            return fake_logits, self.discriminator(real, timesteps), None
        real = real.detach().float().requires_grad_(True)
        real_logits = self.discriminator(real, timesteps)
        return fake_logits, real_logits, r1_penalty(real, real_logits)


class _Updates:
    """`personalive_cli.training.stage.Updater` for self-updating stages: backward passes and optimiser steps
    (gradients accumulate over micro-batches; the optimisers step at the last one)."""

    training = True

    def __init__(self, accelerator, net, optimizer, params, config: TrainConfig, accumulation: int,
                 d_step=None, d_optimizer=None, discriminator=None):
        self.accelerator, self.net, self.optimizer, self.params = accelerator, net, optimizer, params
        self.config, self.accumulation = config, accumulation
        self.d_step, self.d_optimizer, self.discriminator = d_step, d_optimizer, discriminator
        self.last_micro = True
        self.grad_norms: list[float] = []
        self.d_grad_norms: list[float] = []

    def parallel(self, fn, *args, **kwargs):
        return self.net(fn, *args, **kwargs)

    def update_generator(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss / self.accumulation)
        if self.last_micro:
            self.grad_norms.append(float(self.accelerator.clip_grad_norm_(self.params, self.config.max_grad_norm)))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def discriminate(self, fake: torch.Tensor, real: torch.Tensor, timesteps):
        if self.d_step is None:
            raise RuntimeError("this run has no discriminator")
        return self.d_step(fake, real, timesteps)

    def update_discriminator(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss / self.accumulation)
        if self.last_micro:
            params = list(self.discriminator.parameters())
            self.d_grad_norms.append(float(self.accelerator.clip_grad_norm_(params, self.config.max_grad_norm)))
            self.d_optimizer.step()
            self.d_optimizer.zero_grad(set_to_none=True)


class _NothingToDo(Exception):
    def __init__(self, run: RunFolder, step: int, max_steps: int):
        super().__init__()
        self.run, self.step, self.max_steps = run, step, max_steps


class _StopFlag:
    """SIGINT/SIGTERM → stop after the current step; a second SIGINT raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ANN001 - signal handler signature
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step and saving a checkpoint (Ctrl-C again to abort without saving)")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def load_dataset_class(spec: str):
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"dataset class {spec!r} cannot be loaded ({exc})") from None


def _ignore_interrupts(worker_id: int) -> None:
    """Data-loader workers ignore Ctrl-C (the terminal signals the whole process group): the training process
    finishes its step, still reading batches, saves a checkpoint and then shuts the workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _count_skipped(batch: dict, skipped: Counter) -> None:
    """Add the corrupt clips the dataset stepped over for this batch (``skipped``: ";"-joined ids per sample)."""
    for ids in batch.get("skipped", []):
        for clip_id in filter(None, str(ids).split(";")):
            if clip_id not in skipped:
                log.warning(f"skipped corrupt clip {clip_id} (the dataset reads another clip in its place)")
            skipped[clip_id] += 1


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in batch.items()}


class Runner:
    """One training run of ``stage`` on the dataset folder ``data`` into the run folder ``output``.

    ``resume=True`` continues the run in ``output`` from its newest checkpoint (its saved config is used;
    ``overrides`` may only change the schedule and bookkeeping, see `RESUMABLE_CHANGES`).
    Callbacks (main process only): ``on_start(start_step, max_steps)``, ``on_step(step, row)`` after every
    optimiser step (row = the metrics of that step), ``on_event(text)`` for checkpoints and strips.
    """

    def __init__(self, stage: Stage, data: str | Path, output: str | Path, config: TrainConfig | None = None,
                 resume: bool = False, overrides: dict | None = None,
                 on_start: Callable[[int, int], None] | None = None,
                 on_step: Callable[[int, dict], None] | None = None,
                 on_event: Callable[[str], None] | None = None):
        self.stage, self.data, self.output = stage, Path(data), Path(output)
        self.config = config or TrainConfig()
        self.resume, self.overrides = resume, overrides or {}
        self.on_start = on_start or (lambda start, total: None)
        self.on_step = on_step or (lambda step, row: None)
        self.on_event = on_event or (lambda text: log.info(text))

    # ------------------------------------------------------------------------------------------------ setup

    def _resolve_config(self) -> tuple[TrainConfig, RunFolder | None]:
        if not self.resume:
            check_new_run(self.output)
            return self.config, None
        run = open_run(self.output, self.stage.name)
        saved = TrainConfig().updated(read_yaml(run.config_file), str(run.config_file))
        changed = {k: v for k, v in self.overrides.items() if getattr(saved, k, object()) != v}
        fixed = sorted(set(changed) - set(RESUMABLE_CHANGES))
        if fixed:
            raise UserError(f"--resume continues {run.path} with its own config; {fixed[0]} cannot change "
                            f"(only {', '.join(RESUMABLE_CHANGES)} can)")
        config = saved.updated(changed, "command line")
        steps = run.checkpoint_steps()
        if steps and steps[-1] >= config.max_steps:
            raise _NothingToDo(run, steps[-1], config.max_steps)
        return config, run

    def _accelerator(self, config: TrainConfig):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        precision = config.mixed_precision
        cuda = torch.cuda.is_available()
        if precision == "auto":
            precision = "fp16" if cuda else "no"
        if precision == "fp16" and not cuda:
            raise UserError("mixed_precision fp16 needs a CUDA device; on the CPU use no (or bf16)")
        project = ProjectConfiguration(project_dir=str(self.output), logging_dir=str(self.output / TRACKER_DIR))
        # find_unused_parameters: the uncond / zero-pose / zero-motion steps leave whole networks without
        # gradients, differently on each process (as in the official code).
        # Without CUDA, several processes (accelerate launch / torchrun) are data-parallel on the CPU (gloo)
        # only when accelerate is told it runs on the CPU.
        mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        return Accelerator(mixed_precision=precision, project_config=project, cpu=not cuda and not mps,
                           log_with=None if config.log_with == "none" else config.log_with,
                           kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])

    def _optimizer(self, config: TrainConfig, params: list[nn.Parameter], lr: float | None = None,
                   ) -> torch.optim.Optimizer:
        kwargs = dict(lr=lr or config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                      eps=config.adam_epsilon, weight_decay=config.weight_decay)
        if config.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise UserError("optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes; CUDA only), "
                                "or use --set optimizer=adamw") from None
            return bnb.optim.AdamW8bit(params, **kwargs)
        return torch.optim.AdamW(params, **kwargs)

    # ------------------------------------------------------------------------------------------------ run

    def run(self) -> RunResult:
        from personalive_cli.pipeline.components import PersonaLiveModels
        from personalive_cli.training.clips import read_train_manifest

        try:
            config, existing = self._resolve_config()
        except _NothingToDo as done:
            self.on_event(f"nothing to do: the run is at step {done.step} of max_steps {done.max_steps} "
                          "(give a larger --max-steps to continue)")
            return RunResult(done.run.path, done.step, False, done.run.checkpoint(done.step))
        read_train_manifest(self.data)  # a missing or empty dataset fails before anything slow
        accelerator = self._accelerator(config)
        # Every process has checked the output folder before process 0 may create it.
        accelerator.wait_for_everyone()
        rank, world = accelerator.process_index, accelerator.num_processes
        main = accelerator.is_main_process
        accumulation = config.accumulation_steps(world)
        if self.stage.generator_updates > 1 and accumulation > 1:
            raise UserError(f"{self.stage.name} makes {self.stage.generator_updates} optimiser steps per sample, so it "
                            f"cannot accumulate gradients (accumulation {accumulation}); use one sample per process "
                            "and step (gradient_accumulation_steps=1, global_batch_size = batch_size x processes)")
        if config.optimizer == "adamw8bit":
            self._optimizer(config, [nn.Parameter(torch.zeros(1))])  # fail early if bitsandbytes is absent
        self.stage.setup(config)  # the stage's own frozen networks (LPIPS): a missing file fails here
        torch.manual_seed(config.seed)

        if existing is None:
            from personalive_cli.training.init import initial_models

            init = initial_models(config.init, config.random_init, seed=config.seed)
            models, init_detail = init.models, init.detail
        else:
            models = PersonaLiveModels.from_pretrained(existing.base)
            init_detail = existing.info().get("init", "")
        discriminator = None
        if self.stage.uses_discriminator(config):
            from personalive_cli.training.init import initial_discriminator

            torch.manual_seed(config.seed)
            discriminator = initial_discriminator(config)
        dataset_cls = load_dataset_class(config.dataset or self.stage.default_dataset)
        dataset = dataset_cls(self.data, **self.stage.dataset_kwargs(config, models))
        validation_frames = None
        if config.validate_every and main:
            from personalive_cli.training.validation import read_validation_frames

            validation_frames = read_validation_frames(self.data, config.validation_clip, config.size,
                                                       config.validation_frames)

        # Every input is valid: now (and only now) the run folder appears.
        if existing is None:
            if main:
                info = {"stage": self.stage.name, "init": init_detail, "data": str(self.data.resolve()),
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "trained_modules": list(self.stage.trained_modules), "version": _version()}

                def write(staging: Path) -> None:
                    write_yaml(staging / "config.yaml", config)
                    (staging / "run.json").write_text(json.dumps(info, indent=2))
                    models.save_pretrained(staging / "base")

                create_run(self.output, write)
            accelerator.wait_for_everyone()
        run = RunFolder(self.output)
        return self._train(accelerator, config, run, models, dataset, accumulation, validation_frames, rank, world,
                           discriminator)

    def _train(self, accelerator, config: TrainConfig, run: RunFolder, models, dataset, accumulation: int,
               validation_frames, rank: int, world: int, discriminator=None) -> RunResult:
        main = accelerator.is_main_process
        device = accelerator.device
        started = time.perf_counter()
        stage = self.stage
        stage.configure(models)
        frozen_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
        if device.type != "cuda":
            frozen_dtype = torch.float32
        models.to(device)
        for frozen in (models.vae, models.image_encoder):
            if frozen.dtype != frozen_dtype:  # (diffusers warns about any .to(dtype), even a no-op one)
                frozen.to(dtype=frozen_dtype)
        if config.gradient_checkpointing:
            models.denoising_unet.enable_gradient_checkpointing()
            models.reference_unet.enable_gradient_checkpointing()
        net = _StepModule(models, stage)
        params = stage.trainable_parameters(models)
        optimizer = self._optimizer(config, params)
        d_step = d_optimizer = None
        if discriminator is None:
            net, optimizer = accelerator.prepare(net, optimizer)
        else:
            discriminator.to(device).train()
            d_step = _DiscriminatorStep(discriminator, config.r1_gamma > 0)
            d_optimizer = self._optimizer(config, list(discriminator.parameters()),
                                          config.learning_rate * config.discriminator_lr_scale)
            net, optimizer, d_step, d_optimizer = accelerator.prepare(net, optimizer, d_step, d_optimizer)
        updates = _Updates(accelerator, net, optimizer, params, config, accumulation, d_step, d_optimizer,
                           discriminator)
        checkpoint_keys = self._checkpoint_keys(accelerator, net)

        start_step, skipped, samples = 0, Counter(), 0
        latest = run.latest_checkpoint()
        if latest is not None:
            self._check_checkpoint(latest, checkpoint_keys)
            accelerator.load_state(str(latest), strict=False)
            state = json.loads((latest / TRAINER_STATE).read_text())
            start_step, samples = state["step"], state["samples"]
            skipped = Counter(state.get("skipped", {}))
            if main:
                self.on_event(f"resumed from {latest} (step {start_step})")

        if main and config.log_with != "none":
            accelerator.init_trackers(stage.name)
        norms = ["grad_norm", "d_grad_norm"] if discriminator is not None else ["grad_norm"]
        term_names = stage.logged_terms(config)
        columns = ["step", *term_names, *norms, "lr", "samples_per_s", "skipped", "elapsed_s", "val_loss"]
        metrics = MetricsLog(run.metrics, columns, resume_step=start_step) if main else None
        batch_per_step = config.batch_size * accumulation * world
        import torch.utils.data as tud

        # micro-batch m of rank r reads k = (m * world + r) * batch + j: the datasets' GlobalSampler from m0
        first_micro = start_step * accumulation
        sampler = GlobalSampler(config.batch_size, start=first_micro * config.batch_size * world, rank=rank,
                                world=world, steps=config.max_steps * accumulation - first_micro)
        loader = tud.DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                                pin_memory=device.type == "cuda", persistent_workers=False,
                                worker_init_fn=_ignore_interrupts if config.num_workers else None,
                                multiprocessing_context=worker_context() if config.num_workers else None)
        batches = iter(loader)
        stop = _StopFlag()
        with stop:
            result = RunResult(run.path, start_step, False, latest, dict(skipped), start_step=start_step)
            if main:
                self.on_start(start_step, config.max_steps)
                if start_step == 0 and config.validate_every:  # the starting point, for comparison
                    val_loss = self._validation_loss(models, dataset, config, device, accelerator)
                    metrics.write({"step": 0, "val_loss": val_loss})
                    if config.log_with != "none":
                        accelerator.log({"train/val_loss": val_loss}, step=0)
                    result.validation.append(self._validate(accelerator, models, config, run, 0, validation_frames))
            accelerator.wait_for_everyone()
            window_seconds, window_steps = 0.0, 0  # training time only (no validation, no checkpoints)
            for step in range(start_step, config.max_steps):
                step_started = time.perf_counter()
                terms: dict[str, float] = {}
                for a in range(accumulation):
                    micro = step * accumulation + a
                    batch = next(batches)
                    _count_skipped(batch, skipped)
                    seed = step_seed(config.seed, micro, rank)
                    torch.manual_seed(seed)  # dropout layers draw from the global generator
                    ctx = StepContext(step=step, micro_step=micro, generator=torch.Generator().manual_seed(seed),
                                      device=device, config=config)
                    sync = a == accumulation - 1
                    if stage.updates_itself:
                        updates.last_micro, ctx.updater = sync, updates
                        out = stage.training_step(models, _to_device(batch, device), ctx)
                    else:
                        with contextlib.nullcontext() if sync else accelerator.no_sync(net):
                            out = net(stage.training_step, models, _to_device(batch, device), ctx)
                            accelerator.backward(out["loss"] / accumulation)
                    for k, v in out.items():
                        if k in term_names:
                            terms[k] = terms.get(k, 0.0) + float(v.detach()) / accumulation
                if stage.updates_itself:
                    grad_norms = [_mean(updates.grad_norms)]
                    if discriminator is not None:
                        grad_norms.append(_mean(updates.d_grad_norms))
                    updates.grad_norms, updates.d_grad_norms = [], []
                else:
                    grad_norms = [float(accelerator.clip_grad_norm_(params, config.max_grad_norm))]
                    if discriminator is not None:
                        grad_norms.append(float("nan"))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                done = step + 1
                samples += batch_per_step
                window_steps += 1
                window_seconds += time.perf_counter() - step_started
                result.step = done

                logged = done % config.log_every == 0 or done == config.max_steps
                row = {"step": done}
                if logged:
                    values = torch.tensor([*terms.values(), *grad_norms, float(sum(skipped.values()))],
                                          device=device, dtype=torch.float64)
                    values = accelerator.reduce(values, reduction="mean") if world > 1 else values
                    row = {"step": done, **dict(zip(terms, values[:len(terms)].tolist(), strict=True)),
                           **dict(zip(norms, values[len(terms):-1].tolist(), strict=True)),
                           "lr": optimizer.param_groups[0]["lr"],
                           "samples_per_s": window_steps * batch_per_step / max(window_seconds, 1e-9),
                           "skipped": int(round(float(values[-1]) * world)),
                           "elapsed_s": time.perf_counter() - started}
                    window_seconds, window_steps = 0.0, 0

                stopping = self._stop_requested(accelerator, stop.requested, world)
                last = done == config.max_steps
                validate = config.validate_every and (done % config.validate_every == 0 or last) and not stopping
                if validate and main:
                    row["val_loss"] = self._validation_loss(models, dataset, config, device, accelerator)
                    result.validation.append(self._validate(accelerator, models, config, run, done,
                                                            validation_frames))
                if main:
                    if logged or validate:
                        metrics.write(row)
                        if config.log_with != "none":
                            accelerator.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=done)
                    self.on_step(done, row)
                if validate:
                    accelerator.wait_for_everyone()
                if done % config.checkpoint_every == 0 or last or stopping:
                    if world > 1:
                        self._check_replicas(accelerator, net, d_step)
                    result.checkpoint = self._save(accelerator, config, run, done, samples, skipped)
                if stopping:
                    result.interrupted = True
                    break
        accelerator.wait_for_everyone()
        if main and config.log_with != "none":
            accelerator.end_training()
        result.skipped = dict(skipped)
        result.seconds = time.perf_counter() - started
        return result

    @staticmethod
    def _stop_requested(accelerator, local: bool, world: int) -> bool:
        """Whether any process was asked to stop (all processes must agree on the step they stop at)."""
        if world == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    def _checkpoint_keys(self, accelerator, net) -> set[str]:
        """The state keys checkpoints hold (``trained.<network>.<name>``; the stage may leave out what it never
        trains, e.g. Stage III keeps only the temporal modules): checkpoints are written and checked with it."""
        keys = {k for k in accelerator.unwrap_model(net).state_dict()
                if self.stage.checkpoint_key(k.removeprefix("trained."))}

        def keep_trained(models, weights, output_dir) -> None:  # noqa: ANN001 - accelerate's hook signature
            if weights:
                for key in [k for k in weights[0] if k not in keys]:
                    del weights[0][key]

        accelerator.register_save_state_pre_hook(keep_trained)
        return keys

    @staticmethod
    def _check_checkpoint(path: Path, keys: set[str]) -> None:
        """The checkpoint holds exactly the run's trained keys (it is loaded non-strictly: it omits the rest)."""
        from safetensors import safe_open

        try:
            with safe_open(str(path / MODEL_FILE), "pt") as f:
                saved = set(f.keys())
        except Exception as exc:  # noqa: BLE001 - a damaged file in any way is one line
            raise UserError(f"cannot read {path / MODEL_FILE} ({str(exc).splitlines()[0] if str(exc) else exc!r})"
                            ) from None
        if saved != keys:
            extra, missing = sorted(saved - keys), sorted(keys - saved)
            raise UserError(f"checkpoint {path} does not match this run's trained networks ("
                            f"{len(missing)} keys missing, e.g. {missing[:2]}; {len(extra)} unexpected, e.g. "
                            f"{extra[:2]})")

    def _check_replicas(self, accelerator, net, d_step=None) -> None:
        """Data-parallel processes must hold identical weights: compare a checksum of every parameter across
        processes; a mismatch is an error, not a silent divergence. (Buffers such as BatchNorm statistics are
        process 0's: DDP broadcasts them at every forward pass, and process 0 saves them.)"""
        params = [p for _, p in accelerator.unwrap_model(net).named_parameters()]
        if d_step is not None:
            params += list(accelerator.unwrap_model(d_step).parameters())
        total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        for i, value in enumerate(params):
            v = value.detach().double().flatten()
            total[0] += v.sum()
            total[1] += (v * torch.linspace(1, 2, v.numel(), dtype=torch.float64, device=v.device)).sum() * (i + 1)
        sums = accelerator.gather(total[None]).cpu()
        if not torch.equal(sums, sums[:1].expand_as(sums)):
            raise RuntimeError(f"the {len(sums)} processes hold different weights (checksums {sums[:, 0].tolist()})")
        if accelerator.is_main_process:
            log.info(f"all {len(sums)} processes hold identical weights (checksum {float(sums[0, 1]):.12g})")

    def _save(self, accelerator, config: TrainConfig, run: RunFolder, step: int, samples: int,
              skipped: Counter) -> Path:
        """accelerate's state into a hidden folder, then renamed into place (all processes take part)."""
        import shutil

        final = run.checkpoint(step)
        partial = run.checkpoints / f".{step_name(step)}.partial"
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if not (partial / MODEL_FILE).is_file():
                raise RuntimeError(f"accelerate wrote no {MODEL_FILE} into {partial}")
            state = {"step": step, "samples": samples, "skipped": dict(skipped)}
            (partial / TRAINER_STATE).write_text(json.dumps(state, indent=2))
            if final.exists():
                shutil.rmtree(final)
            partial.replace(final)
            run.prune_checkpoints(config.keep_checkpoints)
            self.on_event(f"checkpoint {final}")
        accelerator.wait_for_everyone()
        return final

    @torch.no_grad()
    def _validation_loss(self, models, dataset, config: TrainConfig, device, accelerator) -> float:
        """The stage's loss on fixed samples with fixed draws, in eval mode, without conditioning dropout:
        comparable across steps (and runs of the same data and seed), the over-fitting measure."""
        if not config.validation_samples:
            return float("nan")
        samples = [dataset[VALIDATION_SAMPLES + i] for i in range(config.validation_samples)]
        batch = _to_device(torch.utils.data.default_collate(samples), device)
        eval_config = self.stage.evaluation_config(config)
        models.eval()
        rng = torch.random.get_rng_state()
        try:
            seed = step_seed(config.seed, VALIDATION_SAMPLES, 0)
            torch.manual_seed(seed)
            ctx = StepContext(step=-1, micro_step=-1, generator=torch.Generator().manual_seed(seed), device=device,
                              config=eval_config)
            with accelerator.autocast():
                return float(self.stage.training_step(models, batch, ctx)["loss"])
        finally:
            torch.random.set_rng_state(rng)
            self.stage.configure(models)

    def _validate(self, accelerator, models, config: TrainConfig, run: RunFolder, step: int, frames) -> Path:
        from personalive_cli.training.validation import generate_strip, save_png

        reference, driving = frames
        models.eval()
        try:
            with accelerator.autocast():
                strip = generate_strip(models, reference, driving, config.validation_frames, config.size,
                                       accelerator.device, config.seed)
        finally:
            self.stage.configure(models)
        path = save_png(strip, run.validation / f"{step_name(step)}.png")
        if config.log_with == "tensorboard":
            with contextlib.suppress(Exception):  # images in TensorBoard are a convenience; the PNG is the record
                writer = accelerator.get_tracker("tensorboard", unwrap=True)
                writer.add_image("validation", strip, global_step=step, dataformats="HWC")
        self.on_event(f"validation strip {path}")
        return path


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _version() -> str:
    from personalive_cli import __version__

    return __version__


__all__ = ["RunResult", "Runner", "load_dataset_class"]
