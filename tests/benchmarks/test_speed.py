"""Speed measurement on a test-double method (4 frames per step, one step of pipeline delay, a conv)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.speed import SpeedOptions, device_peak_tflops, measure_method


def test_speed_row_of_a_windowed_method(double_method):
    ref = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    opts = SpeedOptions(size=128, device="cpu", warmup=1, steps=5, fps=50.0)
    row = measure_method("test-double", opts, ref)
    assert row["status"] == "ok" and row["frames/step"] == 4 and row["steps"] == 5
    assert row["FPS"] > 0 and row["step median (s)"] > 0 and row["step p95 (s)"] >= row["step median (s)"]
    assert row["latency (s)"] == row["step median (s)"]
    # exact FLOPs of the double's 3x3 conv (3 -> 3 channels) on one 128² frame
    assert row["GFLOPs/frame"] == pytest.approx(2 * 3 * 3 * 9 * 128 * 128 / 1e9)
    assert row["TFLOP/s"] > 0 and row["device TFLOP/s"] > 0 and row["% of peak"] > 0
    assert row["peak mem (GiB)"] >= 0 and "peak RSS" in row["mem kind"]
    # true frame latency: waiting for a 4-frame chunk (0..3 frame periods) plus one step of window
    # delay (4 frame periods) at 50 fps: 80..140 ms plus compute; the step's compute alone is far less
    assert row["paced fps"] == 50.0
    assert 0.07 < row["frame latency (s)"] < 0.5
    assert row["frame latency p95 (s)"] >= row["frame latency (s)"] > row["latency (s)"]
    assert len(row["step times"]) == 5 and len(row["frame latencies"]) >= 8


def test_still_is_instant_and_slow_methods_are_paced_at_what_they_sustain(double_method, monkeypatch):
    ref = np.zeros((128, 128, 3), np.uint8)
    row = measure_method("still", SpeedOptions(size=128, device="cpu", warmup=1, steps=4, fps=25.0, flops=False), ref)
    assert row["frame latency (s)"] < 0.03 and row["FPS"] > 100 and "GFLOPs/frame" not in row
    import time

    real_step = double_method.start(double_method(size=128), ref).step.__func__

    def slow_step(self, frames):
        time.sleep(0.05)  # 4 frames per 50 ms = 80 fps max: cannot keep up with 1000 fps
        yield from real_step(self, frames)

    session_cls = type(double_method(size=128).start(ref))
    monkeypatch.setattr(session_cls, "step", slow_step)
    row = measure_method("test-double", SpeedOptions(size=128, device="cpu", warmup=2, steps=4, fps=1000.0,
                                                     flops=False), ref)
    assert row["paced fps"] < 80  # 0.8 x the warm-up throughput, not the 1000 fps asked for


def test_device_peak_is_positive():
    assert device_peak_tflops("cpu", seconds=0.2) > 0


def test_clip_based_method_is_timed_over_the_whole_clip(monkeypatch):
    """A TEST DOUBLE that buffers every push and outputs only at flush (like the external baselines):
    FPS must be frames / (push all + flush) wall time, not frames / (time of pushes that output nothing)."""
    import time

    from personalive_cli import registry
    from personalive_cli.registry import Method, Session

    class ClipSession(Session):
        def __init__(self):
            super().__init__(frames_per_step=4)
            self.frames = []

        def push(self, frames):
            self.frames.append(frames)
            return iter(())

        def step(self, frames):  # never called: push() is overridden to only buffer
            raise AssertionError("step() must not be called")

        def flush(self):
            time.sleep(0.2)
            yield from self.frames

    class ClipDouble(Method):
        frames_per_step = 4
        clip_based = True

        def start(self, reference):
            return ClipSession()

    registry.available()
    monkeypatch.setitem(registry._REGISTRY, "clip-double", ClipDouble)
    ClipDouble.name = "clip-double"
    ref = np.zeros((128, 128, 3), np.uint8)
    row = measure_method("clip-double", SpeedOptions(size=128, device="cpu", warmup=1, steps=3, flops=False), ref)
    assert row["steps"] == 1 and "whole clip" in row["timing"]
    assert 0.2 <= row["latency (s)"] < 0.6
    assert row["FPS"] == pytest.approx(12 / row["latency (s)"])  # 12 frames / the clip's wall time
    assert 12 / 0.6 < row["FPS"] <= 12 / 0.2
    assert row["frame latency (s)"] >= 0.2


def test_pipeline_fill_is_not_the_sustained_pace_and_frame_latency_is_measured(double_method, monkeypatch):
    """A method that emits nothing for its first 3 steps (PersonaLive's window) and whose fill steps are
    cheap: the pace comes from steps that produced output, and with --steps 1 frame latency is still measured."""
    import time

    ref = np.zeros((128, 128, 3), np.uint8)
    session_cls = type(double_method(size=128).start(ref))

    def step(self, frames):
        self.n = getattr(self, "n", 0) + 1
        if self.n <= 3:  # filling: no output, no real work
            self.held.append(list(frames))
            return
        time.sleep(0.04)  # 4 frames per 40 ms: 100 fps sustainable
        self.held.append(list(frames))
        yield from self.held.popleft()

    monkeypatch.setattr(session_cls, "step", step)
    row = measure_method("test-double", SpeedOptions(size=128, device="cpu", warmup=1, steps=1, fps=1000.0,
                                                     flops=False), ref)
    assert row["warm-up steps"] >= 5  # 3 silent ones + 2 that emitted
    assert row["paced fps"] < 100  # from the productive steps (0.8 x ~100), not the instant fill steps
    assert "frame latency (s)" in row and len(row["frame latencies"]) >= 4


def test_attention_flops_are_counted_on_cpu():
    import torch
    import torch.nn.functional as F

    from benchmarks.speed import _count_flops

    b, h, L, d = 2, 3, 64, 16
    q = torch.randn(b, h, L, d)
    assert _count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == pytest.approx(4 * b * h * L * L * d)


def test_peak_memory_is_the_increase_over_the_methods_start(double_method):
    ballast = np.ones(64 * 2**20, np.uint8)  # 64 MiB resident before the method: must not count
    ref = np.zeros((128, 128, 3), np.uint8)
    row = measure_method("test-double", SpeedOptions(size=128, device="cpu", warmup=1, steps=2, flops=False), ref)
    assert 0 <= row["peak mem (GiB)"] < 0.06 and "start" in row["mem kind"]
    del ballast
