"""An offline face detector: mediapipe's BlazeFace (full-range model), bundled in mediapipe 0.10.21.

mediapipe is the optional ``faces`` extra (``pip install 'personalive[faces]'``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

import numpy as np

from personalive_cli.errors import UserError

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


class FaceDetector:
    """Largest face box of an RGB frame, or ``None``."""

    def __init__(self, min_confidence: float = 0.5):
        os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logs would flood stderr
        try:
            with quiet_native_stderr():
                from mediapipe.python.solutions import face_detection
        except ImportError:
            raise UserError("--crop auto needs mediapipe: pip install 'personalive[faces]' "
                            "(or use --crop none)") from None
        # Its graph threads print TFLite/absl banners while starting: construct it and run one
        # warm-up inference inside a single silenced window.
        with quiet_native_stderr():
            self._detector = face_detection.FaceDetection(model_selection=1, min_detection_confidence=min_confidence)
            self._detector.process(np.zeros((128, 128, 3), np.uint8))

    def detect(self, frame: np.ndarray) -> Box | None:
        faces = self.detect_all(frame)
        return faces[0] if faces else None

    def detect_all(self, frame: np.ndarray) -> list[Box]:
        """Every face box, largest first."""
        h, w = frame.shape[:2]
        result = self._detector.process(np.ascontiguousarray(frame))
        boxes = []
        for d in result.detections or []:
            b = d.location_data.relative_bounding_box
            boxes.append((b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h))
        return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)

    def close(self) -> None:
        self._detector.close()


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence what mediapipe's C++ side writes straight to fd 2 (banners, not errors we act on)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        # Native code may buffer stderr (C stdio): flush it while fd 2 still points at /dev/null.
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
