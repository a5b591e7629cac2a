"""The metric table: which columns, which can run, and the one-line reason when not."""

from __future__ import annotations

import pytest

from benchmarks.metrics.errors import MetricUnavailable
from benchmarks.metrics.registry import METRICS, available_metrics, metric_status, require_metric
from benchmarks.metrics.weights import ALEXNET, ARCFACE, FID_INCEPTION, I3D, has_module


def test_columns_and_directions():
    assert {"LPIPS", "tLP", "ID-SIM", "FVD", "FID"} <= set(METRICS)
    assert METRICS["ID-SIM"].higher_is_better and not METRICS["FVD"].higher_is_better
    # the offline dlib column never takes the paper's ArcFace name
    assert METRICS["ID-SIM (dlib)"].name != "ID-SIM" and not METRICS["ID-SIM (dlib)"].in_paper


def test_nothing_available_without_files(empty_caches):
    status = available_metrics(weights_dir=empty_caches)
    assert set(status) == set(METRICS)
    for name in ("LPIPS", "tLP", "ID-SIM", "FVD", "FID"):
        st = status[name]
        assert not st.available and st.reason.startswith(f"{name}: ") and "\n" not in st.reason
    assert "w600k_r50.onnx" in status["ID-SIM"].reason
    assert "i3d_torchscript.pt" in status["FVD"].reason
    with pytest.raises(MetricUnavailable, match="alexnet-owt-7be5be79.pth"):
        require_metric("LPIPS", weights_dir=empty_caches)
    with pytest.raises(KeyError):
        metric_status("PSNR")


def test_files_in_weights_dir_make_columns_available(empty_caches):
    (empty_caches / "buffalo_l").mkdir()
    for wf, sub in ((ALEXNET, ""), (ARCFACE, "buffalo_l"), (I3D, ""), (FID_INCEPTION, "")):
        (empty_caches / sub / wf.filename).write_bytes(b"x")
    status = available_metrics(weights_dir=empty_caches)
    expect = {"LPIPS": has_module("lpips"), "ID-SIM": has_module("insightface") and has_module("onnxruntime"),
              "FVD": has_module("scipy"),
              "FID": has_module("pytorch_fid")}
    for name, ok in expect.items():
        assert status[name].available == ok, status[name].reason
    if expect["ID-SIM"]:
        assert status["ID-SIM"].files["w600k_r50.onnx"].endswith("buffalo_l/w600k_r50.onnx")
    # an explicit path wins, and a wrong explicit path is reported as such
    st = metric_status("FVD", paths={"i3d_torchscript.pt": empty_caches / "elsewhere.pt"})
    assert not st.available and "elsewhere.pt" in st.reason


def test_make_metric_reports_missing_network(empty_caches):
    from benchmarks.metrics.registry import make_metric

    for name, filename in (("ID-SIM", "w600k_r50.onnx"), ("FVD", "i3d_torchscript.pt")):
        with pytest.raises(MetricUnavailable, match=filename.replace(".", r"\.")):
            make_metric(name, weights_dir=empty_caches)
    with pytest.raises(KeyError):
        make_metric("PSNR")
