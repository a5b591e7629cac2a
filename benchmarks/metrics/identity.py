"""ID-SIM: identity similarity between the reference portrait and every generated frame.

``ID-SIM`` (the paper's column): insightface's ArcFace ``w600k_r50.onnx`` (buffalo_l pack), loaded from a
local file through insightface's own ``model_zoo`` (its ``ArcFaceONNX``, on onnxruntime), on faces
aligned by insightface's ``face_align.norm_crop`` (five points onto its 112×112 ``arcface_dst``
template). Input normalisation is ``ArcFaceONNX``'s: RGB, (x − 127.5) / 127.5, NCHW. Score: cosine
between the reference's embedding and each frame's, averaged over frames.

Five-point landmarks come from MediaPipe Face Mesh (bundled with the ``mediapipe`` wheel, offline;
iris centres 468/473, nose tip 1, mouth corners 61/291), else dlib's 68-point predictor, else none.
Without a landmark detection the face is taken to be the central square of side
``crop_fraction · min(h, w)`` (0.7 by default: about ArcFace's scale for a face-centred 512²
portrait crop), resized to 112² (``on_no_face="crop"``), or the frame is left out (``on_no_face="skip"``).

``ID-SIM (dlib)``: a separate, fully offline column: dlib's ResNet face descriptor
(``dlib_face_recognition_resnet_model_v1.dat`` from the ``face_recognition_models`` wheel) with dlib's
HOG detector, 68-point predictor and its own 150×150 chip alignment; cosine of the 128-d descriptors.
It is not ArcFace and its values are not comparable with the paper's ID-SIM.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable

import numpy as np

from benchmarks.metrics.common import as_image, as_video
from benchmarks.metrics.errors import MetricUnavailable
from benchmarks.metrics.weights import ARCFACE, face_recognition_models_dir, has_module, require_module

ARCFACE_SIZE = 112
DEFAULT_CROP_FRACTION = 0.7
BENCH_EXTRA = "'personalive[bench]'"

Landmarker = Callable[[np.ndarray], "np.ndarray | None"]


def _insightface():
    """insightface, imported on first use: it is an optional (bench) dependency and slow to import."""
    require_module("ID-SIM", "insightface", BENCH_EXTRA)
    try:
        import insightface.model_zoo
        import insightface.utils.face_align
    except ImportError as e:  # e.g. its onnxruntime or opencv missing or broken
        raise MetricUnavailable("ID-SIM", f"insightface cannot be imported ({e}); "
                                f"pip install {BENCH_EXTRA}") from e
    return insightface


# --------------------------------------------------------------------------- alignment


def center_crop_face(image: np.ndarray, crop_fraction: float = DEFAULT_CROP_FRACTION,
                     size: int = ARCFACE_SIZE) -> np.ndarray:
    """The documented no-landmark fallback: central square of side crop_fraction·min(h, w) -> size².

    Warped with ``cv2.warpAffine`` (bilinear, black border) like ``norm_crop``, so both crops share one
    pixel convention; OpenCV comes with insightface.
    """
    cv2 = require_module("ID-SIM", "cv2", BENCH_EXTRA)
    h, w = image.shape[:2]
    side = crop_fraction * min(h, w)
    scale = size / side
    # map the crop's centre to the output centre (cv2 puts pixel centres on integer coordinates)
    m = np.array([[scale, 0.0, size / 2 - scale * (w - 1) / 2 - 0.5],
                  [0.0, scale, size / 2 - scale * (h - 1) / 2 - 0.5]])
    return cv2.warpAffine(np.ascontiguousarray(image), m, (size, size), flags=cv2.INTER_LINEAR,
                          borderValue=0.0)


def norm_crop(image: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """insightface's ``face_align.norm_crop``: the 5 landmarks (ArcFace order) onto its template."""
    face_align = _insightface().utils.face_align
    return face_align.norm_crop(np.ascontiguousarray(image), np.asarray(landmarks, np.float64),
                                image_size=size)


class MediaPipeLandmarker:
    """Five ArcFace-order points from MediaPipe Face Mesh (offline: models ship in the mediapipe wheel)."""

    IDX = (468, 473, 1, 61, 291)  # iris centres (image-left, image-right), nose tip, mouth corners

    def __init__(self, min_detection_confidence: float = 0.5):
        mp = require_module("ID-SIM", "mediapipe", "mediapipe==0.10.21")
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=min_detection_confidence)

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        res = self._mesh.process(np.ascontiguousarray(image))
        if not res.multi_face_landmarks:
            return None
        lm = res.multi_face_landmarks[0].landmark
        h, w = image.shape[:2]
        return np.array([[lm[i].x * w, lm[i].y * h] for i in self.IDX], dtype=np.float64)

    def close(self) -> None:
        self._mesh.close()


def _dlib_models() -> tuple:
    dlib = require_module("ID-SIM (dlib)", "dlib", "dlib-bin (or dlib)")
    d = face_recognition_models_dir()
    if d is None or not (d / "shape_predictor_68_face_landmarks.dat").is_file():
        raise MetricUnavailable("ID-SIM (dlib)", "shape_predictor_68_face_landmarks.dat not found; "
                                "pip install face_recognition_models")
    return dlib, d


class DlibLandmarker:
    """Five ArcFace-order points from dlib's HOG detector + 68-point predictor (face_recognition_models)."""

    def __init__(self):
        dlib, d = _dlib_models()
        self._det = dlib.get_frontal_face_detector()
        self._sp = dlib.shape_predictor(str(d / "shape_predictor_68_face_landmarks.dat"))

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        image = np.ascontiguousarray(image)
        rects = self._det(image, 1)
        if len(rects) == 0:
            return None
        rect = max(rects, key=lambda r: r.width() * r.height())
        p = np.array([[q.x, q.y] for q in self._sp(image, rect).parts()], dtype=np.float64)
        return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def make_landmarker(kind: str | Landmarker | None = "auto") -> Landmarker | None:
    """"auto" (mediapipe, else dlib, else none), "mediapipe", "dlib", "none"/None, or a callable."""
    if callable(kind):
        return kind
    if kind in (None, "none"):
        return None
    if kind == "mediapipe":
        return MediaPipeLandmarker()
    if kind == "dlib":
        return DlibLandmarker()
    if kind == "auto":
        if has_module("mediapipe"):
            return MediaPipeLandmarker()
        if has_module("dlib") and face_recognition_models_dir() is not None:
            return DlibLandmarker()
        return None
    raise ValueError(f"unknown landmarker {kind!r}")


class FaceAligner:
    """Image -> 112×112 ArcFace crop: 5-point alignment when landmarks are found, else the centre crop."""

    def __init__(self, landmarker: str | Landmarker | None = "auto",
                 crop_fraction: float = DEFAULT_CROP_FRACTION, size: int = ARCFACE_SIZE):
        self.landmarker = make_landmarker(landmarker)
        self.crop_fraction = crop_fraction
        self.size = size

    @property
    def landmarker_name(self) -> str:
        lm = self.landmarker
        return "none" if lm is None else getattr(lm, "__name__", type(lm).__name__)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        """(aligned uint8 (size, size, 3), whether landmarks were found)."""
        pts = self.landmarker(image) if self.landmarker is not None else None
        if pts is None:
            return center_crop_face(image, self.crop_fraction, self.size), False
        return norm_crop(image, pts, self.size), True


# --------------------------------------------------------------------------- embedders


class ArcFaceONNX:
    """The bench's ArcFace embedder: aligned uint8 RGB (n, 112, 112, 3) -> (n, d).

    The network is insightface's ``model_zoo.ArcFaceONNX`` built by ``model_zoo.get_model`` on the local
    file found by ``ARCFACE.resolve`` (never a download: a missing file raises before insightface is asked).
    ``providers``: onnxruntime execution providers; None lets insightface pick (CUDA if present, else CPU).
    """

    def __init__(self, weights: str | os.PathLike | None = None, weights_dir: str | os.PathLike | None = None,
                 providers: list[str] | None = None):
        self.path = ARCFACE.resolve(weights, weights_dir)
        model_zoo = _insightface().model_zoo
        try:
            # get_model takes a name ending in .onnx as a file path, and routes it by its input shape
            model = model_zoo.get_model(str(self.path), providers=providers)
        except Exception as e:
            raise MetricUnavailable("ID-SIM", f"cannot load {self.path}: {e}; {ARCFACE.how}") from e
        if not isinstance(model, model_zoo.ArcFaceONNX):
            raise MetricUnavailable("ID-SIM", f"{self.path} is not an ArcFace recognition model "
                                    f"(insightface sees {type(model).__name__}); {ARCFACE.how}")
        self.model = model
        batch = model.input_shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        faces = np.asarray(faces, dtype=np.uint8)
        # get_feat takes OpenCV's BGR images and swaps them to RGB itself; our frames are RGB
        bgr = [np.ascontiguousarray(f[..., ::-1]) for f in faces]
        step = self.fixed_batch or len(bgr)
        outs = [self.model.get_feat(bgr[i:i + step]) for i in range(0, len(bgr), step)]
        return np.concatenate(outs).reshape(len(faces), -1)


def _normalize(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=np.float64)
    n = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.maximum(n, 1e-12)


# --------------------------------------------------------------------------- metrics


class IdentityMetric(abc.ABC):
    """Cosine identity similarity: reference vs each frame.

    Subclasses implement ``embed(images) -> (embeddings (n, d), face_found (n,) bool)``.
    ``on_no_face``: "crop" keeps frames without a detected face (documented fallback crop), "skip" leaves
    them out (their per-frame value is NaN).
    """

    name = "ID-SIM"

    def __init__(self, on_no_face: str = "crop", batch_size: int = 16):
        if on_no_face not in ("crop", "skip"):
            raise ValueError("on_no_face must be 'crop' or 'skip'")
        self.on_no_face = on_no_face
        self.batch_size = max(1, int(batch_size))
        self.last_faces_found: int | None = None
        self.last_frames: int | None = None

    @abc.abstractmethod
    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Identity embeddings of ``images`` and which of them had a face."""

    def similarities(self, reference, frames) -> np.ndarray:
        """Per-frame cosine similarity (n,); NaN for frames skipped under on_no_face='skip'."""
        ref = as_image(reference, "reference")
        frames = as_video(frames, "frames")
        ref_e, _ = self.embed(ref[None])
        ref_e = _normalize(ref_e)[0]
        sims, found_all = [], []
        for i in range(0, len(frames), self.batch_size):
            e, found = self.embed(frames[i:i + self.batch_size])
            s = _normalize(e) @ ref_e
            if self.on_no_face == "skip":
                s = np.where(found, s, np.nan)
            sims.append(s)
            found_all.append(np.asarray(found, bool))
        found = np.concatenate(found_all)
        self.last_faces_found, self.last_frames = int(found.sum()), len(found)
        return np.concatenate(sims)

    def __call__(self, reference, frames) -> float:
        s = self.similarities(reference, frames)
        if np.isnan(s).all():
            return float("nan")
        return float(np.nanmean(s))


class ArcFaceIdentity(IdentityMetric):
    """The paper's ID-SIM column: 5-point aligned ArcFace (w600k_r50.onnx) cosine.

    ``embedder``: callable aligned uint8 (n, 112, 112, 3) -> (n, d); defaults to ``ArcFaceONNX``
    (inject a test double here). ``aligner``: a ``FaceAligner`` (or its ``landmarker`` argument).
    """

    name = "ID-SIM"

    def __init__(self, embedder: Callable[[np.ndarray], np.ndarray] | None = None,
                 aligner: FaceAligner | str | Landmarker | None = "auto", *, weights=None, weights_dir=None,
                 on_no_face: str = "crop", crop_fraction: float = DEFAULT_CROP_FRACTION, batch_size: int = 16):
        super().__init__(on_no_face=on_no_face, batch_size=batch_size)
        # Load the network first: a missing file is reported before any landmark model is built.
        self.embedder = embedder if embedder is not None else ArcFaceONNX(weights, weights_dir)
        self.aligner = aligner if isinstance(aligner, FaceAligner) else FaceAligner(aligner, crop_fraction)

    def align(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self.aligner(im) for im in images]
        return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=bool)

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        faces, found = self.align(images)
        return np.asarray(self.embedder(faces)), found


class DlibIdentity(IdentityMetric):
    """``ID-SIM (dlib)``: dlib ResNet face descriptor cosine (offline weights from face_recognition_models)."""

    name = "ID-SIM (dlib)"

    def __init__(self, on_no_face: str = "crop", crop_fraction: float = DEFAULT_CROP_FRACTION,
                 num_jitters: int = 1, batch_size: int = 16):
        super().__init__(on_no_face=on_no_face, batch_size=batch_size)
        dlib, d = _dlib_models()
        rec = d / "dlib_face_recognition_resnet_model_v1.dat"
        if not rec.is_file():
            raise MetricUnavailable(self.name, f"{rec.name} not found; pip install face_recognition_models")
        self._dlib = dlib
        self._det = dlib.get_frontal_face_detector()
        self._sp = dlib.shape_predictor(str(d / "shape_predictor_68_face_landmarks.dat"))
        self._rec = dlib.face_recognition_model_v1(str(rec))
        self.crop_fraction = crop_fraction
        self.num_jitters = num_jitters

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dlib = self._dlib
        embs, found = [], []
        for im in images:
            im = np.ascontiguousarray(im)
            rects = self._det(im, 1)
            if len(rects) > 0:
                rect = max(rects, key=lambda r: r.width() * r.height())
                found.append(True)
            else:
                h, w = im.shape[:2]
                side = self.crop_fraction * min(h, w)
                x0, y0 = (w - side) / 2, (h - side) / 2
                rect = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x0 + side)), int(round(y0 + side)))
                found.append(False)
            shape = self._sp(im, rect)
            embs.append(np.array(self._rec.compute_face_descriptor(im, shape, self.num_jitters)))
        return np.stack(embs), np.array(found, dtype=bool)


def id_sim(reference, frames, metric: IdentityMetric | None = None, **kwargs) -> float:
    """Mean ArcFace cosine between ``reference`` (h, w, 3) and each of ``frames`` (n, h, w, 3)."""
    return (metric or ArcFaceIdentity(**kwargs))(reference, frames)
