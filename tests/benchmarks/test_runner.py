"""The bench runner on tiny synthetic videos: quality rows, cache resume, absent weights, strict, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.report import merge, write_outputs
from benchmarks.runner import BenchConfig, resolve_methods, run_shard
from personalive_cli.errors import UserError

LPIPS_ONLY = ["LPIPS", "tLP (self)", "tLP (cross)"]


def _cfg(dataset, out, methods, **kw):
    return BenchConfig(methods=methods, dataset=str(dataset), output=str(out), size=128, device="cpu",
                       metrics=kw.pop("metrics", LPIPS_ONLY), **kw)


def _row(df, name):
    return df[(df["method"] == name) & (df["source"] == "measured")].iloc[0]


def test_quality_rows_and_outputs(tiny_dataset, tmp_path, double_method, random_lpips):
    out = tmp_path / "out"
    run_shard(_cfg(tiny_dataset, out, ["still", "test-double"]), metric_overrides={"LPIPS": random_lpips})
    df, notes = merge(out)
    copy, still = _row(df, "test-double"), _row(df, "still")
    assert copy["videos"] == 3 and copy["LPIPS"] == pytest.approx(0, abs=1e-6)  # outputs == ground truth
    assert copy["tLP (self)"] == pytest.approx(0, abs=1e-6)
    assert still["LPIPS"] > 0.01 and still["tLP (self)"] > 0  # a frozen portrait vs moving video
    assert "no cross-reenactment videos" in notes["tLP (cross)"]
    paper = df[df["source"] != "measured"]
    assert set(paper["method"]) >= {"PersonaLive", "LivePortrait", "X-Portrait"}
    pl = paper[paper["method"] == "PersonaLive"].iloc[0]
    assert (pl["LPIPS"], pl["FPS"], pl["latency (s)"]) == (0.129, 15.82, 0.253)
    paths = write_outputs(df, notes, out)
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    assert "PersonaLive" in paths["md"].read_text() and "n/a*" in paths["md"].read_text()
    rows = json.loads(paths["json"].read_text())["rows"]
    assert any(r["method"] == "still" and r["source"] == "measured" for r in rows)


def test_cross_protocol_from_manifest(tiny_dataset, tmp_path, double_method, random_lpips):
    from PIL import Image

    ref = tmp_path / "ref.png"
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(ref)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"driving": str(tiny_dataset / "clip0.mp4")},
                                    {"id": "x", "driving": str(tiny_dataset / "clip1.mp4"), "reference": str(ref)}]))
    out = tmp_path / "out"
    run_shard(_cfg(manifest, out, ["test-double"]), metric_overrides={"LPIPS": random_lpips})
    df, notes = merge(out)
    row = _row(df, "test-double")
    assert row["set"] == "cross" and row["videos"] == 2
    assert row["tLP (cross)"] == pytest.approx(0, abs=1e-6)  # copies the driving video: same motion


def test_cache_resumes_after_interruption(tiny_dataset, tmp_path, double_method, random_lpips, monkeypatch):
    out = tmp_path / "out"
    calls = []
    fail = {"at": 2}
    real_start = double_method.start

    def start(self, reference):
        calls.append(1)
        if len(calls) == fail["at"]:
            raise KeyboardInterrupt("interrupted")  # stopped (Ctrl-C) while on the second video
        return real_start(self, reference)

    monkeypatch.setattr(double_method, "start", start)
    with pytest.raises(KeyboardInterrupt, match="interrupted"):
        run_shard(_cfg(tiny_dataset, out, ["test-double"]), metric_overrides={"LPIPS": random_lpips})
    cached = list((out / "cache").glob("test-double-*/*.json"))
    assert len(cached) == 1
    with pytest.raises(UserError, match="no result yet"):
        merge(out)
    calls.clear()
    fail["at"] = None
    run_shard(_cfg(tiny_dataset, out, ["test-double"]), metric_overrides={"LPIPS": random_lpips})
    assert len(calls) == 2  # only the two missing videos ran
    calls.clear()
    run_shard(_cfg(tiny_dataset, out, ["test-double"]), metric_overrides={"LPIPS": random_lpips})
    assert calls == []  # everything cached
    df, _ = merge(out)
    assert _row(df, "test-double")["videos"] == 3
    # other settings (another size) are not mixed with these results
    run_shard(BenchConfig(methods=["test-double"], dataset=str(tiny_dataset), output=str(out), size=192,
                          device="cpu", metrics=LPIPS_ONLY, max_videos=1), metric_overrides={"LPIPS": random_lpips})
    assert len(calls) == 1


def test_absent_weights_and_missing_metrics(tiny_dataset, tmp_path, absent_method, empty_metric_caches):
    out = tmp_path / "out"
    run_shard(_cfg(tiny_dataset, out, ["still", "needs-weights"], metrics=None, speed=True, warmup=0, steps=1,
                   random_weights=True))
    df, notes = merge(out)
    row = _row(df, "needs-weights")
    assert "weights absent: test-weights.pth not found" in row["status"]
    assert "cannot build random weights" in row["status"]
    assert np.isnan(row["FPS"]) and np.isnan(row["LPIPS"])
    assert "alexnet-owt-7be5be79.pth not found" in notes["LPIPS"]
    assert "w600k_r50.onnx" in notes["ID-SIM"] and "i3d_torchscript.pt" in notes["FVD"]
    assert _row(df, "still")["FPS"] > 0


def test_strict_and_unknown_method(tiny_dataset, tmp_path, empty_metric_caches):
    with pytest.raises(UserError, match="alexnet-owt-7be5be79.pth"):
        run_shard(_cfg(tiny_dataset, tmp_path / "o", ["still"], strict=True))
    with pytest.raises(UserError, match="unknown method 'nope'"):
        resolve_methods("still,nope")
    assert "still" in resolve_methods("all")


def test_set_level_metrics_through_the_runner(tmp_path, double_method, moving_frames):
    """FVD/FID/ID-SIM plumbing with TEST-DOUBLE feature extractors (the real networks are downloads)."""
    from helpers import write_video

    data = tmp_path / "data"
    data.mkdir()
    for k in range(2):
        write_video(data / f"v{k}.mp4", moving_frames(16, 128, k))

    def clip_features(clips):  # (b, 16, h, w, 3) -> (b, 3): mean colour
        return clips.reshape(len(clips), -1, 3).mean(1)

    def frame_features(frames):  # (n, h, w, 3) -> (n, 3)
        return frames.reshape(len(frames), -1, 3).mean(1) + np.arange(len(frames))[:, None] * 0.01

    def identity(reference, frames):
        return float(1 - np.abs(frames.astype(float) - reference).mean() / 255)

    out = tmp_path / "out"
    overrides = {"FVD": clip_features, "FID": frame_features, "ID-SIM": identity}
    run_shard(_cfg(data, out, ["still", "test-double"], metrics=["ID-SIM", "FVD", "FID"]), metric_overrides=overrides)
    df, notes = merge(out)
    copy, still = _row(df, "test-double"), _row(df, "still")
    assert copy["FID"] == pytest.approx(0, abs=1e-6) and copy["FVD samples"] == 2
    assert still["FID"] > 0.01 and still["ID-SIM"] == pytest.approx(1.0) and copy["ID-SIM"] < 1
    assert not np.isnan(copy["FVD"]) and copy["set"] == "self"


def test_driving_context_methods_get_each_clips_fps(tiny_dataset, tmp_path, context_method, random_lpips):
    run_shard(_cfg(tiny_dataset, tmp_path / "out", ["context-double"]), metric_overrides={"LPIPS": random_lpips})
    assert context_method.seen == [(25.0, None)] * 3  # built per clip with its fps (no audio track)


def test_a_failing_method_is_a_row_not_the_end_of_the_bench(tiny_dataset, tmp_path, double_method, random_lpips,
                                                           monkeypatch):
    """A method raising (out of memory, a bug) in quality and in speed gets "failed: <reason>"; the others run."""
    def boom(self, reference):
        raise MemoryError("CUDA out of memory (test)")

    monkeypatch.setattr(double_method, "start", boom)
    out = tmp_path / "out"
    run_shard(_cfg(tiny_dataset, out, ["test-double", "still"], max_videos=1, speed=True, warmup=0, steps=1),
              metric_overrides={"LPIPS": random_lpips})
    df, _ = merge(out)
    bad, still = _row(df, "test-double"), _row(df, "still")
    assert bad["quality"] == "failed" and "failed: MemoryError: CUDA out of memory (test)" in bad["status"]
    assert "speed: failed: MemoryError" in bad["status"]
    assert still["videos"] == 1 and still["FPS"] > 0
    from benchmarks.report import rich_tables

    assert any("failed: MemoryError" in t for t in rich_tables(df, {}) if isinstance(t, str))
    write_outputs(df, {}, out)


def test_cache_is_keyed_by_the_files_not_only_the_ids(tmp_path, double_method, random_lpips, moving_frames):
    """Two datasets with the same file names in one --output: the second must not reuse the first's
    scores; the tLP (cross) target is part of the key too."""
    from helpers import write_video

    out = tmp_path / "out"
    for k, name in enumerate(("a", "b")):
        d = tmp_path / name
        d.mkdir()
        write_video(d / "clip.mp4", moving_frames(4, 128, k), fps=25)
    run_shard(_cfg(tmp_path / "a", out, ["still"]), metric_overrides={"LPIPS": random_lpips})
    lp_a = _row(merge(out)[0], "still")["LPIPS"]
    run_shard(_cfg(tmp_path / "b", out, ["still"]), metric_overrides={"LPIPS": random_lpips})
    assert len(list((out / "cache").glob("still-*/clip-*.json"))) == 2
    assert _row(merge(out)[0], "still")["LPIPS"] != lp_a
    from benchmarks.runner import method_key

    cfg = _cfg(tmp_path / "a", out, ["still"])
    assert method_key(cfg, "still") != method_key(_cfg(tmp_path / "a", out, ["still"], tlp_cross="none"), "still")
    with pytest.raises(UserError, match="--tlp-cross"):
        run_shard(_cfg(tmp_path / "a", out, ["still"], tlp_cross="both"))


def test_non_square_raw_video_is_refused(tmp_path, double_method):
    from helpers import write_video

    d = tmp_path / "raw"
    d.mkdir()
    write_video(d / "wide.mp4", [np.zeros((64, 96, 3), np.uint8)] * 2, fps=25)
    with pytest.raises(UserError, match="not square.*personalive data prepare folder"):
        run_shard(_cfg(d, tmp_path / "out", ["still"], metrics=[]))
