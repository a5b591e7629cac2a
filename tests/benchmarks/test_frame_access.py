"""The frame-access benchmark runs both readers on the same index sets and reports medians and ratio."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_video

from benchmarks.frame_access import main, measure, workloads


def test_workloads_follow_the_datasets():
    plan = workloads(300, samples=5)
    assert all(len(p) == 2 and len(set(p)) == 2 for p in plan["pair"])
    assert all(len(w) == 40 and np.all(np.diff(w) == 4) for w in plan["window"])
    short = workloads(20, samples=2)["window"]  # shorter than the 157-frame span: the whole clip
    assert all(w[0] == 0 and w[-1] == 19 for w in short)


def test_measure_small_clip(tmp_path, capsys):
    pytest.importorskip("decord")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(12)]
    clip = write_video(tmp_path / "c.mp4", frames)
    res = measure(clip, samples=2)
    assert res["frames"] == {"decord": 12, "pyav": 12}
    for workload in ("pair", "window"):
        row = res[workload]
        assert row["decord ms"] > 0 and row["pyav ms"] > 0 and row["pyav cpu ms"] > 0
        assert row["ratio pyav/decord"] == round(row["pyav ms"] / row["decord ms"], 2)
    assert main([str(tmp_path / "absent.mp4"), "--samples", "2"]) == 1
    assert "video not found" in capsys.readouterr().err
