"""Speed columns: step time, throughput, true frame latency, peak memory, FLOPs, achieved TFLOP/s.

One session per method, driven frame by frame through ``Session.push`` (see benchmarks/README.md):

1. build the method (``--random-weights``: the full-size architecture with random weights; speed does
   not depend on the weights' values) and ``start`` it on the reference (timed as ``start (s)``);
2. ``warmup`` steps pushed as fast as possible (untimed: lazy initialisation, autotuning, the
   method's own pipeline fill); their step times give a first throughput estimate;
3. ``steps`` steps in a **real-time paced run**: driving frame i arrives at ``t0 + i / pace`` and is
   pushed then (or as soon as the previous push returns, when the method is behind). ``pace`` is the
   source fps, or 0.8 × the warm-up throughput when the method cannot keep up with it (so the queue
   does not grow without bound; the ``paced fps`` column says which). For every frame pushed in this
   phase whose output is emitted by a ``push`` (not a final flush), **frame latency** = emission time of
   output i − arrival time of input i: it includes waiting for a full micro-chunk and every step the
   frame spends inside the method's window, which the paper's latency (= one step's compute, 4 frames /
   15.82 FPS = 0.253 s) leaves out. **Step time** = the compute time of the pushes that make one step
   (median and p95 over the paced steps); **FPS** = frames / total step time (compute-bound throughput);
   ``latency (s)`` = median step time (comparable with the paper's number);
4. one more step under ``torch.utils.flop_counter.FlopCounterMode``: FLOPs per output frame = step
   FLOPs / frames per step (matmuls, convolutions and attention; element-wise ops are not counted);
   achieved TFLOP/s = FLOPs per frame × FPS; the device's peak is a large matrix product in the same
   dtype measured in the same run (``device TFLOP/s``).

Peak memory: ``torch.cuda.max_memory_allocated`` from just before the build (CUDA), else the process's
peak resident set size sampled every 10 ms during build and run (psutil).
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from personalive_cli import registry
from personalive_cli.errors import UserError

SPEED_COLUMNS = ("FPS", "latency (s)", "frame latency (s)", "frame latency p95 (s)", "step median (s)",
                 "step p95 (s)", "paced fps", "start (s)", "peak mem (GiB)", "GFLOPs/frame", "TFLOP/s",
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
    """Peak resident set size of this process, sampled by a background thread."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
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


def absent_row(name: str, detail: str) -> dict:
    return {"method": name, "status": f"weights absent: {detail}"}


def build_for_speed(name: str, opts: SpeedOptions):
    """The method to time, or (None, reason) when its weights are absent."""
    from personalive_cli.pipeline.animate import build_method

    cls = registry.get(name)
    options = dict(opts.method_options)
    random = opts.random_weights and getattr(cls, "needs_weights", False)
    if not random:
        status = cls.status(opts.weights)
        if not status.ready:
            return None, status.detail
    else:
        options["random_weights"] = True
    if getattr(cls, "takes_driving_context", False):
        options.update(fps=opts.fps, audio=None, audio_start=0.0)
    try:
        return build_method(name, opts.size, opts.device, opts.dtype, opts.seed, opts.weights, **options), None
    except TypeError as exc:
        if random:
            return None, f"{cls.status(opts.weights).detail} (and it cannot build random weights: {exc})"
        raise


def measure_method(name: str, opts: SpeedOptions, reference: np.ndarray, driving: np.ndarray | None = None,
                   peak_cache: dict | None = None, on_step=None) -> dict:
    """One speed row (see the module docstring). ``on_step(phase, done, total)`` reports progress."""
    import torch

    from personalive_cli.devices import resolve_device, resolve_dtype

    if opts.warmup < 0 or opts.steps < 1:
        raise UserError("--warmup must be >= 0 and --steps >= 1")
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    cuda = torch.device(device).type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    row: dict = {"method": name, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                 "size": opts.size}
    with _RSSPeak() as rss:
        method, why = build_for_speed(name, opts)
        if method is None:
            return absent_row(name, why)
        fps_step = int(method.frames_per_step)
        row.update({"status": "random weights" if opts.random_weights and getattr(type(method), "needs_weights", False)
                    else "ok", "frames/step": fps_step})
        ref = reference if reference.shape[:2] == (opts.size, opts.size) else _resize(reference, opts.size)
        n_frames = (opts.warmup + opts.steps + 1) * fps_step
        frames = _frames(ref, driving, n_frames, opts.size)
        t0 = time.perf_counter()
        session = method.start(ref)
        _sync(device)
        row["start (s)"] = time.perf_counter() - t0

        emitted: list[float] = []          # emission time of output j (j = index in the session)
        push_time = [0.0]                  # compute time of the current step's pushes

        def push(frame, session=session):
            t = time.perf_counter()
            for _ in session.push(frame):
                _sync(device)
                emitted.append(time.perf_counter())
            push_time[0] += time.perf_counter() - t

        # warm-up: as fast as possible
        warm_times = []
        phase_start = time.perf_counter()
        k = 0
        for k in range(opts.warmup):
            push_time[0] = 0.0
            for f in frames[k * fps_step:(k + 1) * fps_step]:
                push(f)
            warm_times.append(push_time[0])
            if on_step:
                on_step("warm-up", k + 1, opts.warmup)
            if opts.budget_s and time.perf_counter() - phase_start > opts.budget_s:
                break
        first = len(warm_times) * fps_step
        # paced run
        pace = float(opts.fps)
        if warm_times:
            sustainable = fps_step / max(float(np.median(warm_times[1:] or warm_times)), 1e-9)
            if sustainable < pace:
                pace = 0.8 * sustainable
        step_times: list[float] = []
        arrivals: dict[int, float] = {}
        origin = time.perf_counter()
        phase_start = origin
        i = first
        for s in range(opts.steps):
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
            if on_step:
                on_step("timed", s + 1, opts.steps)
            if opts.budget_s and s >= 2 and time.perf_counter() - phase_start > opts.budget_s and \
                    len(emitted) > first:
                break
        latencies = [emitted[j] - arrivals[j] for j in range(first, min(len(emitted), i)) if j in arrivals]
        steps_arr = np.asarray(step_times)
        row.update({"warm-up steps": len(warm_times), "steps": len(step_times), "paced fps": pace,
                    "step median (s)": float(np.median(steps_arr)),
                    "step p95 (s)": float(np.percentile(steps_arr, 95)),
                    "FPS": fps_step * len(steps_arr) / max(float(steps_arr.sum()), 1e-12),
                    "step times": [float(t) for t in steps_arr]})
        row["latency (s)"] = row["step median (s)"]
        if latencies:
            row["frame latency (s)"] = float(np.median(latencies))
            row["frame latency p95 (s)"] = float(np.percentile(latencies, 95))
            row["frame latencies"] = [float(x) for x in latencies]
        else:
            row["note"] = "no output emitted during the timed steps: raise --steps to measure frame latency"
        if opts.flops:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as fc, torch.inference_mode():
                for f in frames[i:i + fps_step]:
                    list(session.push(f))
            row["GFLOPs/frame"] = fc.get_total_flops() / fps_step / 1e9
    if cuda:
        row["peak mem (GiB)"] = torch.cuda.max_memory_allocated(device) / 2**30
        row["mem kind"] = "cuda max allocated"
    else:
        row["peak mem (GiB)"] = rss.peak / 2**30
        row["mem kind"] = "process peak RSS"
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


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from personalive_cli.faces.crop import resize

    return resize(image, size)
