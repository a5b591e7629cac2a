"""LivePortrait's own cropper (InsightFace detector + 106 landmarks + landmark.onnx) through onnxruntime,
with TEST-DOUBLE ONNX graphs that output fixed tensors (the real models cannot be downloaded here): the
decoding (anchors, strides, NMS, largest face), the landmark affine round trips, and the choice of the
cropper when the three files are in the weights folder."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from baselines.liveportrait import cropper  # noqa: E402
from baselines.liveportrait.models import LivePortraitLayout  # noqa: E402
from personalive_cli import registry  # noqa: E402


def constant_model(path, input_name, input_shape, outputs):
    """An ONNX graph that ignores its input and returns ``outputs`` (name -> array)."""
    nodes, infos = [], []
    for name, value in outputs.items():
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value.astype(np.float32))))
        infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, "double", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
                              infos)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def scrfd_outputs():
    """Two overlapping faces at stride 32 (the weaker one is suppressed) and a small one at stride 8."""
    outs = {}
    for stride in (8, 16, 32):
        n = (512 // stride) ** 2 * 2
        outs[f"score_{stride}"] = np.zeros((n, 1))
        outs[f"bbox_{stride}"] = np.zeros((n, 4))
        outs[f"kps_{stride}"] = np.zeros((n, 10))
    cell = (8 * 16 + 8) * 2  # row 8, col 8 at stride 32 -> centre (256, 256), first anchor
    outs["score_32"][cell] = 0.9
    outs["bbox_32"][cell] = [2, 3, 2, 3]  # -> (192, 160, 320, 352)
    outs["score_32"][cell + 1] = 0.5
    outs["bbox_32"][cell + 1] = [2, 3, 2.2, 3]
    small = (10 * 64 + 10) * 2  # stride 8, centre (80, 80)
    outs["score_8"][small] = 0.95
    outs["bbox_8"][small] = [1, 1, 1, 1]
    order = [f"score_{s}" for s in (8, 16, 32)] + [f"bbox_{s}" for s in (8, 16, 32)] + [f"kps_{s}" for s in (8, 16, 32)]
    return {k: outs[k] for k in order}


def face_points(n: int) -> np.ndarray:
    """Normalised [0, 1] points of a plausible face in a landmark crop: contour ring + eye and lip anchors."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([0.5 + 0.3 * np.cos(t), 0.5 + 0.35 * np.sin(t)], 1)
    eyes_l, eyes_r, lips = ([33, 35, 40, 39], [87, 89, 94, 93], [52, 61]) if n == 106 else \
        ([0, 6, 12, 18], [24, 30, 36, 42], [48, 66])
    pts[eyes_l] = [0.38, 0.42]
    pts[eyes_r] = [0.62, 0.42]
    pts[lips] = [0.5, 0.68]
    return pts


@pytest.fixture(scope="module")
def onnx_weights(tmp_path_factory, lp_tiny_weights):
    root = tmp_path_factory.mktemp("lp_onnx")
    shutil.copytree(lp_tiny_weights, root, dirs_exist_ok=True)
    lay = LivePortraitLayout.from_root(root)
    lay.detector_onnx.parent.mkdir(parents=True)
    constant_model(lay.detector_onnx, "input.1", [1, 3, 512, 512], scrfd_outputs())
    constant_model(lay.landmark106_onnx, "data", [1, 3, 192, 192], {"fc1": (face_points(106) * 2 - 1).reshape(1, 212)})
    constant_model(lay.landmark_onnx, "input", [1, 3, 224, 224],
                   {"a": np.zeros((1, 214)), "b": np.zeros((1, 10)), "pts": face_points(203).reshape(1, 406)})
    return root


def test_detector_decodes_boxes_nms_and_largest_first(onnx_weights):
    lay = LivePortraitLayout.from_root(onnx_weights)
    faces = cropper.FaceDetectorSCRFD(lay.detector_onnx).detect(np.zeros((512, 512, 3), np.uint8))
    assert len(faces) == 2  # the 0.5 duplicate is suppressed
    np.testing.assert_allclose(faces[0], [192, 160, 320, 352, 0.9], rtol=1e-6)  # largest first, not best score
    np.testing.assert_allclose(faces[1][:4], [72, 72, 88, 88])
    # a non-square image is letterboxed: boxes come back in its own pixels
    tall = cropper.FaceDetectorSCRFD(lay.detector_onnx).detect(np.zeros((1024, 512, 3), np.uint8))
    np.testing.assert_allclose(tall[0][:4], [384, 320, 640, 704])


def test_landmarks_map_back_to_the_image(onnx_weights):
    lay = LivePortraitLayout.from_root(onnx_weights)
    img = np.zeros((512, 512, 3), np.uint8)
    box = np.array([192, 160, 320, 352])
    lmk106 = cropper.Landmark106(lay.landmark106_onnx).run(img, box)
    # the 192 crop spans 1.5 x the box's larger side around its centre
    side = 1.5 * 192
    np.testing.assert_allclose(lmk106, (face_points(106) - 0.5) * side + [256, 256], atol=1e-3)
    lmk203 = cropper.Landmark203(lay.landmark_onnx).run(img, lmk106)
    centre, side203, angle = cropper.landmark_square(lmk106, 1.5, -0.1)
    expected = (face_points(203) * 224 - 112) * side203 / 224
    c, s = np.cos(angle), np.sin(angle)
    expected = expected @ np.array([[c, -s], [s, c]]).T + centre
    np.testing.assert_allclose(lmk203, expected, atol=1e-3)


def test_method_uses_liveportraits_cropper_when_present(onnx_weights, capsys):
    method = registry.get("liveportrait")(weights=onnx_weights, size=256, eye_retargeting=True, lip_retargeting=True)
    assert method.crop_backend == "liveportrait"
    ref = np.full((512, 512, 3), 100, np.uint8)
    session = method.start(ref)
    assert session.crop.backend == "liveportrait" and session.crop.landmarks203.shape == (203, 2)
    assert "offline face detector" not in capsys.readouterr().err
    lmk106 = cropper.Landmark106(LivePortraitLayout.from_root(onnx_weights).landmark106_onnx).run(
        ref, np.array([192, 160, 320, 352]))
    expected = cropper.crop_matrix(*cropper.landmark_square(lmk106, 2.3, -0.125), 512)
    np.testing.assert_allclose(np.linalg.inv(session.crop.crop_to_orig), expected, atol=1e-6)
    outs = [o for f in np.zeros((2, 256, 256, 3), np.uint8) for o in session.push(f)]
    assert [o.shape for o in outs] == [(256, 256, 3)] * 2
    assert session.source_ratios[0] == pytest.approx(0.0, abs=1e-6)  # all eye points coincide in the double
