"""Source cropping for LivePortrait: its own landmark-based similarity crop, or an offline fallback.

With the release's ONNX models present (InsightFace ``det_10g.onnx`` + ``2d106det.onnx`` and
LivePortrait's ``landmark.onnx``, run with onnxruntime on the CPU) the source is cropped exactly as the
official pipeline does: largest detected face -> 106 landmarks -> rotated square of 2.3 x the landmark
extent, shifted up by 0.125 of its side, warped to 512 x 512; the 203-point refinement gives the eye and
lip openness ratios used by retargeting. Without them the project's offline face detector (mediapipe)
gives a face box and an axis-aligned square of the same relative size is used (no rotation, no ratios);
:attr:`SourceCrop.backend` says which one ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personalive_cli.errors import UserError

CROP_SIZE = 512
SOURCE_SCALE, SOURCE_VY = 2.3, -0.125
LANDMARK_SCALE, LANDMARK_VY, LANDMARK_SIZE = 1.5, -0.1, 224
DET_SIZE, DET_THRESH, NMS_THRESH = 512, 0.15, 0.4


def load_cv2():
    try:
        import cv2
    except ImportError:
        raise UserError("the liveportrait method needs OpenCV: pip install 'personalive[faces]' "
                        "(mediapipe brings opencv)") from None
    return cv2


@dataclass
class SourceCrop:
    """The 512 x 512 crop, its crop->original matrix (3 x 3), and 203 landmarks if the ONNX path ran."""

    crop: np.ndarray
    crop_to_orig: np.ndarray
    backend: str  # "liveportrait" (insightface + landmark.onnx), "offline-detector" or "none"
    landmarks203: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------------------
# Crop geometry


def _anchors(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eye centre, lip centre) from 106 or 203 landmarks."""
    if len(pts) == 106:
        left, right, lip = pts[[33, 35, 40, 39]].mean(0), pts[[87, 89, 94, 93]].mean(0), (pts[52] + pts[61]) / 2
    elif len(pts) == 203:
        left, right, lip = pts[[0, 6, 12, 18]].mean(0), pts[[24, 30, 36, 42]].mean(0), (pts[48] + pts[66]) / 2
    else:
        raise ValueError(f"expected 106 or 203 landmarks, got {len(pts)}")
    return (left + right) / 2, lip


def landmark_square(pts: np.ndarray, scale: float, vy: float) -> tuple[np.ndarray, float, float]:
    """(centre, side, angle in radians) of the rotated square the release crops around ``pts``."""
    pts = np.asarray(pts, dtype=np.float64)
    eye, lip = _anchors(pts)
    uy = lip - eye
    uy = uy / (np.linalg.norm(uy) + 1e-12)
    ux = np.array([uy[1], -uy[0]])
    angle = math.acos(float(np.clip(ux[0], -1.0, 1.0)))
    if ux[1] < 0:
        angle = -angle
    mean = pts.mean(0)
    rel = pts - mean
    px, py = rel @ ux, rel @ uy
    c1 = np.array([(px.min() + px.max()) / 2, (py.min() + py.max()) / 2])
    side = max(px.max() - px.min(), py.max() - py.min()) * scale
    centre = mean + ux * c1[0] + uy * c1[1] + uy * (vy * side)  # the release ignores vx
    return centre, float(side), angle


def crop_matrix(centre: np.ndarray, side: float, angle: float, dsize: int) -> np.ndarray:
    """3 x 3 original -> crop similarity (the crop is dsize x dsize)."""
    k = dsize / side
    c, s = math.cos(angle), math.sin(angle)
    cx, cy = float(centre[0]), float(centre[1])
    return np.array([[k * c, k * s, dsize / 2 - k * (c * cx + s * cy)],
                     [-k * s, k * c, dsize / 2 - k * (-s * cx + c * cy)],
                     [0.0, 0.0, 1.0]])


def warp(image: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    cv2 = load_cv2()
    return cv2.warpAffine(image, np.ascontiguousarray(matrix[:2], dtype=np.float64), (width, height),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_from_matrix(image: np.ndarray, o2c: np.ndarray, backend: str, lmk203=None) -> SourceCrop:
    return SourceCrop(crop=warp(image, o2c, CROP_SIZE, CROP_SIZE), crop_to_orig=np.linalg.inv(o2c),
                      backend=backend, landmarks203=lmk203)


def eye_lip_ratios(lmk203: np.ndarray) -> tuple[float, float, float]:
    """(left eye, right eye, lip) openness ratios from 203 landmarks (similarity invariant)."""
    p = np.asarray(lmk203, dtype=np.float64)

    def dist(a: int, b: int) -> float:
        return float(np.linalg.norm(p[a] - p[b]))

    return (dist(6, 18) / (dist(0, 12) + 1e-6), dist(30, 42) / (dist(24, 36) + 1e-6),
            dist(90, 102) / (dist(48, 66) + 1e-6))


# ----------------------------------------------------------------------------------------------------------
# ONNX runners (InsightFace SCRFD detector, 106-point landmarks, LivePortrait's 203-point landmarks)


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _nms(dets: np.ndarray, thresh: float) -> list[int]:
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
        xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(iou <= thresh)[0] + 1]
    return keep


class FaceDetectorSCRFD:
    """InsightFace ``det_10g.onnx``: RGB uint8 -> face boxes (x1, y1, x2, y2, score), largest first."""

    strides = (8, 16, 32)
    num_anchors = 2

    def __init__(self, path: Path, threshold: float = DET_THRESH) -> None:
        self.session = _session(path)
        self.input_name = self.session.get_inputs()[0].name
        self.threshold = threshold

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        cv2 = load_cv2()
        h, w = rgb.shape[:2]
        if h / w > 1:
            new_h, new_w = DET_SIZE, int(DET_SIZE / (h / w))
        else:
            new_w, new_h = DET_SIZE, int(DET_SIZE * (h / w))
        factor = new_h / h
        canvas = np.zeros((DET_SIZE, DET_SIZE, 3), np.float32)
        canvas[:new_h, :new_w] = cv2.resize(rgb, (new_w, new_h))
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None].astype(np.float32)
        outs = self.session.run(None, {self.input_name: blob})
        if len(outs) != 9:
            raise UserError(f"unexpected face detector outputs ({len(outs)}; det_10g.onnx has 9)")
        boxes, scores = [], []
        for i, stride in enumerate(self.strides):
            score = outs[i].reshape(-1)
            dist = outs[i + 3].reshape(-1, 4) * stride
            gh, gw = DET_SIZE // stride, DET_SIZE // stride
            ys, xs = np.mgrid[:gh, :gw]
            centres = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
            centres = np.repeat(centres, self.num_anchors, axis=0)
            keep = score >= self.threshold
            c, d = centres[keep], dist[keep]
            boxes.append(np.stack([c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2], c[:, 1] + d[:, 3]], 1))
            scores.append(score[keep])
        box = np.concatenate(boxes) / factor
        score = np.concatenate(scores)
        if not len(score):
            return np.zeros((0, 5), np.float32)
        dets = np.hstack([box, score[:, None]]).astype(np.float32)
        dets = dets[np.argsort(-score)]
        dets = dets[_nms(dets, NMS_THRESH)]
        area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
        return dets[np.argsort(-area)]


def _input_normalisation(path: Path) -> tuple[float, float]:
    """InsightFace's rule: a graph that normalises itself takes raw 0..255 input, else (x - 127.5) / 128."""
    try:
        import onnx
    except ImportError:
        return 0.0, 1.0
    graph = onnx.load(str(path)).graph
    names = [n.name for n in graph.node[:8]]
    sub = any(n.startswith("Sub") or n.startswith("_minus") for n in names)
    mul = any(n.startswith("Mul") or n.startswith("_mul") for n in names)
    if (sub and mul) or any("bn_data" in n for n in names):
        return 0.0, 1.0
    return 127.5, 128.0


class Landmark106:
    """InsightFace ``2d106det.onnx``: a face box -> 106 landmarks in image pixels."""

    size = 192

    def __init__(self, path: Path) -> None:
        self.session = _session(path)
        self.input_name = self.session.get_inputs()[0].name
        self.mean, self.std = _input_normalisation(path)

    def run(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        cv2 = load_cv2()
        w, h = box[2] - box[0], box[3] - box[1]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        s = self.size / (max(w, h) * 1.5)
        m = np.array([[s, 0, self.size / 2 - cx * s], [0, s, self.size / 2 - cy * s]], np.float64)
        patch = cv2.warpAffine(rgb, m, (self.size, self.size), borderValue=0).astype(np.float32)
        blob = ((patch - self.mean) / self.std).transpose(2, 0, 1)[None].astype(np.float32)
        pred = self.session.run(None, {self.input_name: blob})[0][0].reshape(-1, 2)[-106:]
        pred = (pred + 1) * (self.size // 2)
        inv = cv2.invertAffineTransform(m)
        return pred @ inv[:, :2].T + inv[:, 2]


class Landmark203:
    """LivePortrait's ``landmark.onnx``: previous landmarks -> 203 refined landmarks in image pixels."""

    def __init__(self, path: Path) -> None:
        self.session = _session(path)

    def run(self, rgb: np.ndarray, pts: np.ndarray) -> np.ndarray:
        centre, side, angle = landmark_square(pts, LANDMARK_SCALE, LANDMARK_VY)
        o2c = crop_matrix(centre, side, angle, LANDMARK_SIZE)
        patch = warp(rgb, o2c, LANDMARK_SIZE, LANDMARK_SIZE).astype(np.float32) / 255.0
        out = self.session.run(None, {"input": patch.transpose(2, 0, 1)[None]})
        pred = out[2].reshape(-1, 2) * LANDMARK_SIZE
        c2o = np.linalg.inv(o2c)
        return pred @ c2o[:2, :2].T + c2o[:2, 2]


class LivePortraitCropper:
    """The release's cropper (all three ONNX models) with tracking of driving landmarks for retargeting."""

    def __init__(self, detector: Path, landmark106: Path, landmark203: Path) -> None:
        self.detector = FaceDetectorSCRFD(detector)
        self.landmark106 = Landmark106(landmark106)
        self.landmark203 = Landmark203(landmark203)
        self._track: np.ndarray | None = None

    def landmarks(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(106, 203) landmarks of the largest face, or None."""
        faces = self.detector.detect(rgb)
        if not len(faces):
            return None
        lmk106 = self.landmark106.run(rgb, faces[0])
        return lmk106, self.landmark203.run(rgb, lmk106)

    def crop_source(self, rgb: np.ndarray) -> SourceCrop | None:
        """The official source crop, or None when no face is found."""
        found = self.landmarks(rgb)
        if found is None:
            return None
        lmk106, lmk203 = found
        o2c = crop_matrix(*landmark_square(lmk106, SOURCE_SCALE, SOURCE_VY), CROP_SIZE)
        return crop_from_matrix(rgb, o2c, "liveportrait", lmk203)

    def track(self, rgb: np.ndarray) -> np.ndarray | None:
        """203 landmarks of a driving frame: detection on the first frame, then tracking from the last."""
        if self._track is None:
            found = self.landmarks(rgb)
            if found is None:
                return None
            self._track = found[1]
        else:
            self._track = self.landmark203.run(rgb, self._track)
        return self._track

    def reset(self) -> None:
        self._track = None


def crop_source_offline(rgb: np.ndarray) -> SourceCrop | None:
    """Fallback: the project's offline face detector box -> an axis-aligned LivePortrait-like square
    (None when no face is found)."""
    from personalive_cli.faces.detector import FaceDetector

    detector = FaceDetector()
    try:
        box = detector.detect(rgb)
    finally:
        detector.close()
    if box is None:
        return None
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * SOURCE_SCALE
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2 + SOURCE_VY * side])
    return crop_from_matrix(rgb, crop_matrix(centre, side, 0.0, CROP_SIZE), "offline-detector")


def whole_image(rgb: np.ndarray) -> SourceCrop:
    """No cropping: the whole image resized to 512 (paste-back is then off)."""
    h, w = rgb.shape[:2]
    o2c = np.array([[CROP_SIZE / w, 0, 0], [0, CROP_SIZE / h, 0], [0, 0, 1.0]])
    return crop_from_matrix(rgb, o2c, "none")


def mask_template() -> np.ndarray:
    """The paste-back mask of the release (``mask_template.png``), float32 512 x 512 in [0, 1], rebuilt
    from its definition: 1 on the square [16, 496]^2 and 255 * (16 - d) / 16 (truncated to uint8 levels)
    at a Euclidean distance d < 16 pixels outside it, so the ramp is linear at the edges and rounded at
    the corners (pixel-identical to the released PNG)."""
    idx = np.arange(CROP_SIZE, dtype=np.float64)
    out = np.maximum(0.0, np.maximum(16 - idx, idx - 496))
    dist = np.clip(16 - np.hypot(out[:, None], out[None, :]), 0, 16)
    return (np.floor(255 * dist / 16 + 1e-9) / 255).astype(np.float32)
