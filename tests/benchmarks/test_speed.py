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
    assert row["peak mem (GiB)"] > 0 and row["mem kind"] == "process peak RSS"
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
