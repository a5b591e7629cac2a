"""``personalive bench`` end to end on a 20-frame clip of the shared demo, prepared with the CLI."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from benchmarks.quality import QUALITY_COLUMNS
from benchmarks.speed import SPEED_COLUMNS
from personalive_cli.cli.app import app


@pytest.fixture(scope="module")
def prepared_demo(tmp_path_factory, demo_drive):
    src = tmp_path_factory.mktemp("raw")
    (src / "demo.mp4").symlink_to(demo_drive)
    dst = tmp_path_factory.mktemp("prepared")
    r = CliRunner().invoke(app, ["data", "prepare", "folder", str(src), str(dst), "--size", "128",
                                 "--max-frames", "20"])
    assert r.exit_code == 0, r.output
    return dst


def test_bench_still_with_speed_on_the_demo(prepared_demo, tmp_path):
    out = tmp_path / "results"
    r = CliRunner().invoke(app, ["bench", "--methods", "still", "--dataset", str(prepared_demo), "--speed",
                                 "--size", "128", "--device", "cpu", "--warmup", "1", "--steps", "4",
                                 "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # tables and progress go to stderr
    for title in ("personalive bench: quality", "personalive bench: speed", "personalive bench: compute"):
        assert title in r.stderr
    assert "PersonaLive†" in r.stderr and "15.82" in r.stderr
    df = pd.read_csv(out / "results.csv")
    for col in (*QUALITY_COLUMNS, *SPEED_COLUMNS):
        assert col in df.columns
    still = df[(df["method"] == "still") & (df["source"] == "measured")].iloc[0]
    assert still["videos"] == 1 and still["FPS"] > 0 and still["frame latency (s)"] >= 0
    for name in ("results.json", "results.md", "bench.png"):
        assert (out / name).stat().st_size > 0
    # every column without a value says why
    for col in QUALITY_COLUMNS:
        if pd.isna(still[col]):
            assert col in r.stderr.split("n/a*", 1)[1]
    # a second run reuses the per-video cache
    r = CliRunner().invoke(app, ["bench", "--methods", "still", "--dataset", str(prepared_demo), "--size", "128",
                                 "--device", "cpu", "--output", str(out)])
    assert r.exit_code == 0, r.output


def test_bench_errors(prepared_demo, tmp_path, monkeypatch):
    runner = CliRunner()
    r = runner.invoke(app, ["bench", "--methods", "still,nope", "--dataset", str(prepared_demo), "-o", str(tmp_path)])
    assert r.exit_code == 1 and "unknown method 'nope'" in r.stderr
    for var in ("TORCH_HOME", "INSIGHTFACE_HOME", "PERSONALIVE_METRICS_DIR", "HOME"):
        monkeypatch.setenv(var, str(tmp_path / "empty"))
    r = runner.invoke(app, ["bench", "--methods", "still", "--dataset", str(prepared_demo), "--strict",
                            "--size", "128", "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "alexnet-owt-7be5be79.pth" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["bench", "--methods", "still", "--no-quality", "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "nothing to do" in r.stderr
    r = runner.invoke(app, ["bench", "--methods", "still", "--dataset", str(prepared_demo), "--tlp-cross", "both",
                            "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "--tlp-cross must be driving or none" in r.stderr


def test_tlp_cross_flag_reaches_the_score(tmp_path, moving_frames, random_lpips, double_method):
    """--tlp-cross none scores the output's own frame-to-frame change; driving compares it with the driving's."""
    import numpy as np

    from benchmarks.quality import MetricSet, score_video

    ms = MetricSet(objects={"LPIPS": random_lpips, "tLP": random_lpips})
    video = np.stack(moving_frames(4, 128, 0))
    ref = video[0]
    driving, _ = score_video(ms, "cross", ref, video, video, "cross", tlp_cross="driving")
    none, _ = score_video(ms, "cross", ref, video, video, "cross", tlp_cross="none")
    assert driving["tLP (cross)"] == pytest.approx(0, abs=1e-6) and none["tLP (cross)"] > 0


def test_bench_speed_configurations_of_personalive(tmp_path, tiny_weights):
    """`--configs` gives one speed row per configuration, named after it, with the latency floor beside the
    measured frame latency; unknown settings are refused before any work."""
    out = tmp_path / "results"
    r = CliRunner().invoke(app, ["bench", "--methods", "personalive", "--speed", "--no-quality", "--weights",
                                 str(tiny_weights), "--configs", "eager,static+bf16", "--size", "128",
                                 "--device", "cpu", "--warmup", "1", "--steps", "3", "--budget", "1",
                                 "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert "personalive[static+bf16]" in r.stderr  # shown as is, not eaten as markup
    df = pd.read_csv(out / "results.csv")
    measured = df[df["source"] == "measured"].set_index("method")
    assert set(measured.index) == {"personalive[eager]", "personalive[static+bf16]"}
    assert measured.loc["personalive[static+bf16]", "dtype"] == "bfloat16"
    for name in measured.index:
        row = measured.loc[name]
        assert row["FPS"] > 0 and row["frame latency (s)"] >= row["latency floor (s)"] > 0
    r = CliRunner().invoke(app, ["bench", "--methods", "personalive", "--speed", "--no-quality", "--configs",
                                 "eager,turbo", "--device", "cpu", "--output", str(tmp_path / "x")])
    assert r.exit_code == 1 and "unknown setting 'turbo'" in r.stderr
