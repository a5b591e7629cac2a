"""ID-SIM plumbing on the demo portrait with test-double embedders (the ArcFace ONNX is not here)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from benchmarks.metrics.errors import MetricUnavailable
from benchmarks.metrics.identity import (
    ArcFaceIdentity,
    ArcFaceONNX,
    FaceAligner,
    center_crop_face,
    norm_crop,
)
from benchmarks.metrics.weights import has_module


class RandomProjectionEmbedder:
    """TEST DOUBLE for ArcFace: a fixed random linear map of the centred 112×112 crop to 64-d."""

    def __init__(self, seed=0, dim=64):
        self.w = np.random.default_rng(seed).normal(size=(112 * 112 * 3, dim)).astype(np.float32)
        self.seen: list[np.ndarray] = []

    def __call__(self, faces):
        faces = np.asarray(faces)
        assert faces.shape[1:] == (112, 112, 3) and faces.dtype == np.uint8
        self.seen.append(faces)
        return (faces.reshape(len(faces), -1).astype(np.float32) - 127.5) @ self.w


def _flip(im):
    return np.ascontiguousarray(im[:, ::-1])


def _shift(im, dx=40, dy=24):
    return np.ascontiguousarray(np.roll(np.roll(im, dx, axis=1), dy, axis=0))


def _template() -> np.ndarray:
    """insightface's five-point ArcFace template (112×112), or skip without insightface."""
    return pytest.importorskip("insightface.utils.face_align").arcface_dst.astype(np.float64)


def _similarity(ang: float, scale: float, t) -> np.ndarray:
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    return np.hstack([scale * rot, np.asarray(t, float)[:, None]])


def test_norm_crop_of_template_is_identity():
    img = np.random.default_rng(1).integers(0, 255, size=(112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(norm_crop(img, _template()), img)


def test_norm_crop_undoes_a_known_similarity(demo_portrait):
    """Put a face crop into a big image by a known rotation+scale+shift; the 5-point alignment on the
    moved template points must give the crop back (up to the blur of two bilinear resamplings)."""
    cv2 = pytest.importorskip("cv2")
    face = center_crop_face(demo_portrait)
    m = _similarity(0.35, 3.1, [180.0, 40.0])
    big = cv2.warpAffine(face, m, (512, 512), flags=cv2.INTER_LINEAR, borderValue=0.0)
    pts = _template() @ m[:, :2].T + m[:, 2]
    back = norm_crop(big, pts).astype(int)
    inner = np.abs(back - face.astype(int))[4:-4, 4:-4]  # the outermost pixels mix in the black border
    # measured: mean 0.94, max 25 grey levels (at sharp edges, where the two resamplings blur most)
    assert inner.mean() < 1.5 and inner.max() < 40


def test_center_crop_fallback_geometry():
    img = np.zeros((100, 100, 3), np.uint8)
    img[25:75, 25:75] = 255  # central square of side 0.5·100
    crop = center_crop_face(img, crop_fraction=0.5, size=50)
    assert crop.shape == (50, 50, 3)
    assert crop[2:-2, 2:-2].min() == 255


def test_self_similarity_is_one_and_flipped_is_lower(demo_portrait):
    metric = ArcFaceIdentity(embedder=RandomProjectionEmbedder(), aligner="none")
    sims = metric.similarities(demo_portrait, np.stack([demo_portrait, _flip(demo_portrait), _shift(demo_portrait)]))
    assert sims[0] == pytest.approx(1.0, abs=1e-6)
    assert sims[1] < 0.999 and sims[2] < 0.99
    assert metric(demo_portrait, demo_portrait[None]) == pytest.approx(1.0, abs=1e-6)
    assert metric.last_faces_found == 0  # no landmarker: every frame used the fallback crop


@pytest.mark.skipif(not has_module("mediapipe"), reason="mediapipe not installed")
def test_landmark_alignment_compensates_a_shift(demo_portrait):
    emb = RandomProjectionEmbedder()
    aligned = ArcFaceIdentity(embedder=emb, aligner="mediapipe")
    unaligned = ArcFaceIdentity(embedder=emb, aligner="none")
    frames = np.stack([demo_portrait, _shift(demo_portrait), _flip(demo_portrait)])
    s_al = aligned.similarities(demo_portrait, frames)
    s_un = unaligned.similarities(demo_portrait, frames)
    assert aligned.last_faces_found == 3
    assert s_al[0] == pytest.approx(1.0, abs=1e-6)
    # the 5-point alignment puts the shifted face back on the template; the fixed crop cannot
    assert s_al[1] > 0.98 and s_al[1] > s_un[1] + 0.05
    assert s_al[2] < 1.0 - 1e-4
    # the crop the embedder saw for the reference has the eyes on the template rows
    ref_crop = emb.seen[0][0]
    assert ref_crop.shape == (112, 112, 3)


def test_skip_policy_gives_nan_without_faces(demo_portrait):
    metric = ArcFaceIdentity(embedder=RandomProjectionEmbedder(), aligner=lambda im: None, on_no_face="skip")
    sims = metric.similarities(demo_portrait, demo_portrait[None])
    assert np.isnan(sims).all() and np.isnan(metric(demo_portrait, demo_portrait[None]))


def _linear_onnx(path, side: int = 112, dim: int = 16) -> np.ndarray:
    """TEST DOUBLE of w600k_r50.onnx: Flatten + MatMul with random weights, same input layout
    (n, 3, side, side); returns the weight matrix."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(3 * side * side, dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input.1"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["683"])],
        "arcface_test_double",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, side, side])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", dim])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w


def test_arcface_onnx_plumbing_with_random_weight_model(tmp_path, demo_portrait):
    w = _linear_onnx(tmp_path / "w600k_r50.onnx")
    emb = ArcFaceONNX(weights_dir=tmp_path, providers=["CPUExecutionProvider"])
    faces = np.stack([center_crop_face(demo_portrait), center_crop_face(_flip(demo_portrait))])
    out = emb(faces)
    # insightface's preprocessing: RGB, (x - 127.5) / 127.5, NCHW
    x = ((faces.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).reshape(2, -1)
    np.testing.assert_allclose(out, x @ w, rtol=1e-4, atol=1e-3)
    metric = ArcFaceIdentity(embedder=emb, aligner="none")
    assert metric(demo_portrait, demo_portrait[None]) == pytest.approx(1.0, abs=1e-5)
    assert metric(demo_portrait, _flip(demo_portrait)[None]) < 0.999


def test_a_model_insightface_does_not_route_to_arcface_is_refused(tmp_path):
    _linear_onnx(tmp_path / "w600k_r50.onnx", side=64)  # 64² input: no insightface model type
    with pytest.raises(MetricUnavailable, match="not an ArcFace recognition model"):
        ArcFaceONNX(weights_dir=tmp_path, providers=["CPUExecutionProvider"])


def test_missing_insightface_names_the_bench_extra(tmp_path, monkeypatch, demo_portrait):
    onnx_file = tmp_path / "w600k_r50.onnx"
    onnx_file.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "insightface", None)  # what an environment without it looks like
    for call in (lambda: ArcFaceONNX(weights=onnx_file), lambda: norm_crop(demo_portrait, np.zeros((5, 2)))):
        with pytest.raises(MetricUnavailable) as e:
            call()
        assert str(e.value).startswith("ID-SIM: ") and "pip install 'personalive[bench]'" in str(e.value)


def test_missing_arcface_message_names_the_file(empty_caches):
    with pytest.raises(MetricUnavailable) as e:
        ArcFaceIdentity(weights_dir=empty_caches, aligner="none")
    msg = str(e.value)
    assert msg.startswith("ID-SIM: ") and "w600k_r50.onnx" in msg and "buffalo_l.zip" in msg and "\n" not in msg
    with pytest.raises(MetricUnavailable, match="w600k_r50.onnx"):
        ArcFaceONNX(weights=empty_caches / "w600k_r50.onnx")


@pytest.mark.skipif(not has_module("dlib"), reason="dlib not installed")
def test_dlib_identity_column(demo_portrait):
    from benchmarks.metrics.identity import DlibIdentity

    try:
        metric = DlibIdentity()
    except MetricUnavailable as e:
        pytest.skip(str(e))
    sims = metric.similarities(demo_portrait, np.stack([demo_portrait, _flip(demo_portrait)]))
    assert sims[0] == pytest.approx(1.0, abs=1e-6)
    assert sims[1] < 1.0 - 1e-4
    assert metric.last_faces_found == 2


def test_face_aligner_reports_found(demo_portrait):
    pts = _template() * 4 + 30  # a fixed "landmarker" (test double)
    al = FaceAligner(landmarker=lambda im: pts)
    crop, found = al(demo_portrait)
    assert found and crop.shape == (112, 112, 3)
