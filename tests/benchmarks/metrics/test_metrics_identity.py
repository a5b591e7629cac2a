"""ID-SIM plumbing on the demo portrait with test-double embedders (the ArcFace ONNX is not here)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.metrics.errors import MetricUnavailable
from benchmarks.metrics.identity import (
    ARCFACE_TEMPLATE,
    ArcFaceIdentity,
    ArcFaceONNX,
    FaceAligner,
    center_crop_face,
    estimate_similarity,
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


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, size=(5, 2))
    ang, scale, t = 0.3, 1.7, np.array([12.0, -5.0])
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = src @ (scale * rot).T + t
    m = estimate_similarity(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_norm_crop_of_template_is_identity():
    img = np.random.default_rng(1).integers(0, 255, size=(112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(norm_crop(img, ARCFACE_TEMPLATE), img)
    np.testing.assert_allclose(estimate_similarity(ARCFACE_TEMPLATE, ARCFACE_TEMPLATE),
                               [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def _demo_landmarks(kind, image):
    if kind == "mediapipe":
        if not has_module("mediapipe"):
            pytest.skip("mediapipe not installed")
        from benchmarks.metrics.identity import MediaPipeLandmarker

        pts = MediaPipeLandmarker()(image)
        assert pts is not None
        return pts
    # the template turned by 0.35 rad, scaled by 3.1 and moved onto the face: a non-trivial rotation
    ang = 0.35
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    return (ARCFACE_TEMPLATE - 56.0) @ rot.T * 3.1 + [250.0, 260.0]


@pytest.mark.parametrize("landmarks", ["mediapipe", "rotated"])
def test_insightface_norm_crop_matches_hand_written(demo_portrait, landmarks):
    face_align = pytest.importorskip("insightface.utils.face_align")
    pts = _demo_landmarks(landmarks, demo_portrait)
    ours = norm_crop(demo_portrait, pts).astype(int)
    theirs = face_align.norm_crop(demo_portrait, pts, image_size=112).astype(int)
    assert ours.shape == theirs.shape == (112, 112, 3)
    # Both solve the same Umeyama least squares and warp with cv2.warpAffine (bilinear); insightface's
    # template is float32, so the matrices differ by ~1e-6 px. cv2 snaps sample positions to a 1/32 px
    # grid, and that tiny difference can move a sample across a grid step: at most 1 grey level, rarely.
    # Measured on the demo: 0 (MediaPipe points), max 1 at 2 of 37632 values (rotated points).
    diff = np.abs(ours - theirs)
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-3


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


def test_arcface_onnx_plumbing_with_random_weight_model(tmp_path, demo_portrait):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    # TEST DOUBLE of w600k_r50.onnx: Flatten + MatMul with random weights, same input layout (n, 3, 112, 112)
    w = np.random.default_rng(0).normal(size=(3 * 112 * 112, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input.1"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["683"])],
        "arcface_test_double",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 16])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "w600k_r50.onnx"
    onnx.save(model, str(path))

    emb = ArcFaceONNX(weights_dir=tmp_path, providers=["CPUExecutionProvider"])
    faces = np.stack([center_crop_face(demo_portrait), center_crop_face(_flip(demo_portrait))])
    out = emb(faces)
    # insightface's preprocessing: RGB, (x - 127.5) / 127.5, NCHW
    x = ((faces.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).reshape(2, -1)
    np.testing.assert_allclose(out, x @ w, rtol=1e-4, atol=1e-3)
    metric = ArcFaceIdentity(embedder=emb, aligner="none")
    assert metric(demo_portrait, demo_portrait[None]) == pytest.approx(1.0, abs=1e-5)
    assert metric(demo_portrait, _flip(demo_portrait)[None]) < 0.999


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
    pts = np.array(ARCFACE_TEMPLATE) * 4 + 30  # a fixed "landmarker" (test double)
    al = FaceAligner(landmarker=lambda im: pts)
    crop, found = al(demo_portrait)
    assert found and crop.shape == (112, 112, 3)
