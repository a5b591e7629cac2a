"""Speed columns: step time, throughput, true frame latency, peak memory, FLOPs, achieved TFLOP/s.

One session per method, driven frame by frame through ``Session.push`` (see benchmarks/README.md):

1. build the method (``--random-weights``: the full-size architecture with random weights; speed does
   not depend on the weights' values) and ``start`` it on the reference (timed as ``start (s)``);
2. warm-up, pushed as fast as possible (untimed: lazy initialisation, autotuning, the method's own
   pipeline fill): at least ``warmup`` steps, and on until two steps have emitted output (PersonaLive
   emits nothing for its first 3 steps; such fill steps are not its sustained pace). The step times
   of the warm-up steps that emitted output give a first throughput estimate;
3. ``steps`` steps (more when needed, see below) in a **real-time paced run**: driving frame i arrives
   at ``t0 + i / pace`` and is pushed then (or as soon as the previous push returns, when the method
   is behind). ``pace`` is the source fps, or 0.8 × the warm-up throughput when the method cannot keep
   up with it (so the queue does not grow without bound; the ``paced fps`` column says which). For
   every frame pushed in this phase whose output is emitted by a ``push`` (not a final flush), **frame
   latency** = emission time of output i − arrival time of input i: it includes waiting for a full
   micro-chunk and every step the frame spends inside the method's window, which the paper's latency
   (= one step's compute, 4 frames / 15.82 FPS = 0.253 s) leaves out. The paced run goes on past
   ``steps`` until one step's worth of its own frames came out (at most ``MAX_EXTRA_STEPS`` more), so
   frame latency is measured even with a small ``--steps``. **Step time** = the compute time of the
   pushes that make one step (median and p95 over the paced steps); **FPS** = frames / total step time
   (compute-bound throughput); ``latency (s)`` = median step time (comparable with the paper's number);
4. one more step under ``torch.utils.flop_counter.FlopCounterMode``, with attention forced onto the
   math backend (the fused CPU/flash kernels have no FLOP formula and would count 0): FLOPs per output
   frame = step FLOPs / frames per step (matmuls, convolutions and attention; element-wise ops are not
   counted); achieved TFLOP/s = FLOPs per frame × FPS; the device's peak is a large matrix product in
   the same dtype measured in the same run (``device TFLOP/s``).

Clip-based methods (``clip_based = True``: the subprocess baselines, whose ``push`` only buffers and
whose ``flush`` runs the whole clip) are timed over one clip of ``steps × frames_per_step`` frames:
push all + flush, no warm-up (each clip is a full upstream run). FPS = output frames / that wall time,
``latency (s)`` = the clip's time, frame latency = emission − push time of each frame. A streaming
method that emits nothing before ``flush`` is timed the same way (warm-up + flush). No number is
reported that did not come from producing output frames.

Peak memory is the increase over the level at the method's start (so earlier methods and the metric
networks do not count): CUDA: ``torch.cuda.max_memory_allocated`` (reset before the build) minus the
memory allocated then; CPU: the process's peak resident set size sampled every 10 ms during build and
run (psutil) minus the RSS at the start.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from personalive_cli import registry
from personalive_cli.errors import UserError

SPEED_COLUMNS = ("FPS", "latency (s)", "frame latency (s)", "frame latency p95 (s)", "latency floor (s)", "step median (s)",
                 "step p95 (s)", "paced fps", "start (s)", "warm-up (s)", "peak mem (GiB)", "GFLOPs/frame", "TFLOP/s",
                 "device TFLOP/s", "% of peak")


@dataclass
class SpeedOptions:
    size: int = 512
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 42
    weights: str | None = None
    random_weights: bool = False
    warmup: int = 3
    steps: int = 20
    fps: float = 25.0
    budget_s: float | None = None   # stop a phase early (after its minimum) once it has run this long
    flops: bool = True
    method_options: dict = field(default_factory=dict)


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize(device)
    elif str(device).startswith("mps"):
        torch.mps.synchronize()


def device_peak_tflops(device, dtype=None, seconds: float = 1.0) -> float:
    """Peak matmul TFLOP/s: a large square matrix product (4096² on CUDA, 2048² on CPU) repeated for
    about ``seconds``, in ``dtype`` (the method's)."""
    import torch

    dev = torch.device(device)
    dtype = dtype or torch.float32
    n = 4096 if dev.type == "cuda" else 2048
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(dev)
    reps, best = 1, 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(dev)
        dt = time.perf_counter() - t0
        best = max(best, 2 * n**3 * reps / dt)
        if dt < 0.05:
            reps *= 2
    return best / 1e12


class _RSSPeak:
    """Peak resident set size of this process, sampled by a background thread; ``base`` = RSS at entry."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _frames(reference: np.ndarray, driving: np.ndarray | None, n: int, size: int) -> np.ndarray:
    """``n`` driving frames: the given clip cycled back and forth, or smooth synthetic motion."""
    if driving is not None and len(driving):
        idx = np.arange(n) % (2 * len(driving) - 1 if len(driving) > 1 else 1)
        idx = np.where(idx < len(driving), idx, 2 * len(driving) - 2 - idx)
        return driving[idx]
    out = []
    for i in range(n):  # the reference shifted by a few pixels: moving, face-like input
        dx, dy = int(6 * np.sin(i / 5)), int(4 * np.cos(i / 7))
        out.append(np.roll(reference, (dy, dx), axis=(0, 1)))
    return np.stack(out)


def _period(driving: np.ndarray | None) -> int:
    """Frames after which ``_frames`` repeats (a back-and-forth cycle of the clip; synthetic: 70)."""
    if driving is not None and len(driving):
        return 2 * len(driving) - 2 if len(driving) > 1 else 1
    return 70


class _Cycle:
    """``frames[a:b]`` over an endless repetition of ``base`` (no huge array for long runs)."""

    def __init__(self, base: np.ndarray):
        self.base = base

    def __getitem__(self, sl: slice) -> np.ndarray:
        return self.base[np.arange(sl.start, sl.stop) % len(self.base)]


def absent_row(name: str, detail: str) -> dict:
    return {"method": name, "status": f"weights absent: {detail}"}


def build_for_speed(name: str, opts: SpeedOptions):
    """The method to time, or (None, reason) when its weights are absent."""
    from benchmarks.configs import split
    from personalive_cli.pipeline.animate import build_method

    name, variant, dtype = split(name)
    cls = registry.get(name)
    options = {**opts.method_options, **variant}
    random = opts.random_weights and cls.can_use_random_weights
    if not random:
        status = cls.status(opts.weights)
        if not status.ready:
            return None, status.detail
    else:
        options["random_weights"] = True
    if getattr(cls, "takes_driving_context", False):
        options.update(fps=opts.fps, audio=None, audio_start=0.0)
    try:
        return build_method(name, opts.size, opts.device, dtype or opts.dtype, opts.seed, opts.weights,
                            **options), None
    except TypeError as exc:
        if random:
            return None, f"{cls.status(opts.weights).detail} (and it cannot build random weights: {exc})"
        raise


MAX_EXTRA_STEPS = 64  # cap on the steps added so that outputs appear (warm-up) / frame latency is measured


def measure_method(name: str, opts: SpeedOptions, reference: np.ndarray, driving: np.ndarray | None = None,
                   peak_cache: dict | None = None, on_step=None) -> dict:
    """One speed row (see the module docstring). ``on_step(phase, done, total)`` reports progress."""
    import torch

    from personalive_cli.devices import resolve_device, resolve_dtype

    if opts.warmup < 0 or opts.steps < 1:
        raise UserError("--warmup must be >= 0 and --steps >= 1")
    from benchmarks.configs import split

    device = resolve_device(opts.device)
    dtype = resolve_dtype(split(name)[2] or opts.dtype, device)
    cuda = torch.device(device).type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        cuda_base = torch.cuda.memory_allocated(device)
    row: dict = {"method": name, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                 "size": opts.size}
    with _RSSPeak() as rss:
        method, why = build_for_speed(name, opts)
        if method is None:
            return absent_row(name, why)
        fps_step = int(method.frames_per_step)
        row.update({"status": "random weights" if opts.random_weights and type(method).can_use_random_weights
                    else "ok", "frames/step": fps_step})
        ref = reference if reference.shape[:2] == (opts.size, opts.size) else _resize(reference, opts.size)
        clip_based = type(method).clip_based
        cap = MAX_EXTRA_STEPS
        n_frames = (opts.steps if clip_based else opts.warmup + opts.steps + 2 * cap + 1) * fps_step
        frames = _Cycle(_frames(ref, driving, min(n_frames, _period(driving)), opts.size))
        t0 = time.perf_counter()
        session = method.start(ref)
        _sync(device)
        row["start (s)"] = time.perf_counter() - t0
        if clip_based:
            row.update(_clip_row(session, frames[0:n_frames], device))
            row["note"] = "clip-based method: outputs only at the end of the clip; FPS = frames / clip time"
        else:
            row.update(_stream_run(session, frames, fps_step, opts, device, on_step))
            if opts.flops and row.get("_next") is not None:
                i = row["_next"]
                step = frames[i:i + fps_step]
                row["GFLOPs/frame"] = _count_flops(
                    lambda ses=session: [list(ses.push(f)) for f in step]) / fps_step / 1e9
        row.pop("_next", None)
    if cuda:
        row["peak mem (GiB)"] = (torch.cuda.max_memory_allocated(device) - cuda_base) / 2**30
        row["mem kind"] = "cuda max allocated − allocated at the method's start"
    else:
        row["peak mem (GiB)"] = (rss.peak - rss.base) / 2**30
        row["mem kind"] = "process peak RSS − RSS at the method's start"
    del session, method
    gc.collect()
    key = (str(device), str(dtype))
    if peak_cache is not None and key in peak_cache:
        peak = peak_cache[key]
    else:
        peak = device_peak_tflops(device, dtype)
        if peak_cache is not None:
            peak_cache[key] = peak
    row["device TFLOP/s"] = peak
    if "GFLOPs/frame" in row:
        row["TFLOP/s"] = row["GFLOPs/frame"] * row["FPS"] / 1e3
        row["% of peak"] = 100.0 * row["TFLOP/s"] / peak if peak else float("nan")
    return row


def _stream_run(session, frames, fps_step: int, opts: SpeedOptions, device, on_step) -> dict:
    """Warm-up then the paced run of a streaming method; the row's timing columns."""
    emitted: list[float] = []          # emission time of output j (j = index in the session)
    emitted_by: list[int] = []         # the input whose push emitted output j
    pushed = [0]                       # inputs pushed so far
    push_time = [0.0]                  # compute time of the current step's pushes

    def push(frame):
        t = time.perf_counter()
        pushed[0] += 1
        for _ in session.push(frame):
            _sync(device)
            emitted.append(time.perf_counter())
            emitted_by.append(pushed[0] - 1)
        push_time[0] += time.perf_counter() - t

    # warm-up, as fast as possible: at least --warmup steps, and until outputs came out for 2 steps
    # (a method filling its pipeline emits nothing at first: those steps are not its sustained pace)
    productive: list[float] = []       # step times of warm-up steps that emitted output
    phase_start = time.perf_counter()
    k = 0
    while k < opts.warmup + MAX_EXTRA_STEPS:
        if k >= opts.warmup and len(productive) >= 2:
            break
        before = len(emitted)
        push_time[0] = 0.0
        for f in frames[k * fps_step:(k + 1) * fps_step]:
            push(f)
        if len(emitted) > before:
            productive.append(push_time[0])
        k += 1
        if on_step:
            on_step("warm-up", k, max(opts.warmup, k))
        if opts.budget_s and len(productive) >= 2 and time.perf_counter() - phase_start > opts.budget_s:
            break
    first = k * fps_step
    warmup_seconds = time.perf_counter() - phase_start  # compilation and graph capture happen in here
    if not emitted:  # nothing out after all those steps: time push + flush of what was pushed
        t = time.perf_counter()
        n_out = 0
        for _ in session.flush():
            _sync(device)
            n_out += 1
        if not n_out:
            raise UserError("the method produced no output frame")
        total = time.perf_counter() - phase_start
        return {"timing": "outputs only at flush: whole clip", "warm-up steps": 0, "steps": 1,
                "FPS": n_out / max(total, 1e-12), "latency (s)": total, "step median (s)": total,
                "step p95 (s)": total, "step times": [total], "paced fps": float("nan"),
                "flush (s)": time.perf_counter() - t, "_next": None,
                "note": "no output before flush: timed as one clip"}
    # paced run at the source fps, or 0.8 x what the productive warm-up steps sustained
    pace = float(opts.fps)
    sustainable = fps_step / max(float(np.median(productive[1:] or productive)), 1e-9)
    if sustainable < pace:
        pace = 0.8 * sustainable
    step_times: list[float] = []
    arrivals: dict[int, float] = {}
    origin = time.perf_counter()
    i = first
    s = 0

    def n_latencies():
        return sum(1 for j in range(first, min(len(emitted), i)) if j in arrivals)

    # at least --steps steps, and on until one step's worth of frames pushed here came out (frame latency)
    while s < opts.steps + MAX_EXTRA_STEPS:
        if s >= opts.steps and n_latencies() >= fps_step:
            break
        if opts.budget_s and s >= 3 and time.perf_counter() - origin > opts.budget_s and n_latencies():
            break
        push_time[0] = 0.0
        for f in frames[i:i + fps_step]:
            arrive = origin + (i - first) / pace
            now = time.perf_counter()
            if now < arrive:
                time.sleep(arrive - now)
            arrivals[i] = arrive
            push(f)
            i += 1
        step_times.append(push_time[0])
        s += 1
        if on_step:
            on_step("timed", s, max(opts.steps, s))
    latencies = [emitted[j] - arrivals[j] for j in range(first, min(len(emitted), i)) if j in arrivals]
    steps_arr = np.asarray(step_times)
    out = {"timing": "streaming", "warm-up steps": k, "warm-up (s)": warmup_seconds, "steps": len(step_times),
           "paced fps": pace,
           "step median (s)": float(np.median(steps_arr)), "step p95 (s)": float(np.percentile(steps_arr, 95)),
           "FPS": fps_step * len(steps_arr) / max(float(steps_arr.sum()), 1e-12),
           "step times": [float(t) for t in steps_arr], "_next": i}
    out["latency (s)"] = out["step median (s)"]
    if latencies:
        out["frame latency (s)"] = float(np.median(latencies))
        out["frame latency p95 (s)"] = float(np.percentile(latencies, 95))
        # the schedule's structural floor: output j cannot leave before input emitted_by[j] has arrived
        # (PersonaLive: the last frame of the chunk 3 steps later), whatever the compute takes
        floors = [(emitted_by[j] - j) / pace for j in range(first, min(len(emitted), i)) if j in arrivals]
        out["latency floor (s)"] = float(np.median(floors))
        out["frame latencies"] = [float(x) for x in latencies]
    else:
        out["note"] = "no output emitted during the timed steps: raise --steps or --budget to measure frame latency"
    return out


def _clip_row(session, frames: np.ndarray, device) -> dict:
    """Clip-based methods (outputs only at ``flush``): push the whole clip back to back, flush, and time it.

    FPS = frames / wall-clock seconds of push + flush; latency = that time (one clip); frame latency =
    emission time of output i − push time of input i. Every number comes from produced output frames."""
    pushed: list[float] = []
    emitted: list[float] = []
    t0 = time.perf_counter()
    for f in frames:
        pushed.append(time.perf_counter())
        for _ in session.push(f):
            _sync(device)
            emitted.append(time.perf_counter())
    for _ in session.flush():
        _sync(device)
        emitted.append(time.perf_counter())
    total = time.perf_counter() - t0
    if not emitted:
        raise UserError("the method produced no output frame for the speed clip")
    lat = [emitted[j] - pushed[j] for j in range(min(len(emitted), len(pushed)))]
    return {"timing": f"whole clip ({len(frames)} frames: push all + flush)", "warm-up steps": 0, "steps": 1,
            "paced fps": float("nan"), "FPS": len(emitted) / max(total, 1e-12), "latency (s)": total,
            "step median (s)": total, "step p95 (s)": total, "step times": [total],
            "frame latency (s)": float(np.median(lat)), "frame latency p95 (s)": float(np.percentile(lat, 95)),
            "frame latencies": [float(x) for x in lat]}


def _count_flops(fn) -> float:
    """FLOPs of ``fn()`` as counted by ``FlopCounterMode``, with attention forced onto the math backend
    (the fused CPU/flash kernels have no FLOP formula there and would count 0)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        math_only = sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # pragma: no cover - older torch
        import contextlib
        math_only = contextlib.nullcontext()
    with math_only, FlopCounterMode(display=False) as fc, torch.inference_mode():
        fn()
    return float(fc.get_total_flops())


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from personalive_cli.faces.crop import resize

    return resize(image, size)
