"""Face, eye and mouth boxes of one face: MediaPipe FaceMesh (468 points), as the training masks need.

FaceMesh runs in static-image mode (every frame is detected afresh, so one bad frame does not drag
the next ones) and looks for one face, as the official ``tools/get_boxes.py`` does. Per frame it gives
four axis-aligned boxes ``[x1, y1, x2, y2]`` in pixels of the frame, clipped to it:

- ``face``: all 468 mesh points;
- ``left_eye`` / ``right_eye``: the eye on the image's left / right, from the official 4 points per
  eye (226/230/223/245 and 446/450/465/443: the eye corners, the lower lid and the brow crease, so the
  box covers the socket, not only the lids; about 72x42 px on a 512² demo frame). The eye regions weigh
  twice in the training losses, so their size is part of the recipe;
- ``mouth``: the points of ``FACEMESH_LIPS`` (outer and inner lip contours, the official mouth points).

mediapipe is the optional ``train`` extra (``pip install 'personalive[train]'``).
"""

from __future__ import annotations

import os

import numpy as np

from personalive_cli.errors import UserError
from personalive_cli.faces.detector import quiet_native_stderr

PARTS = ("face", "left_eye", "right_eye", "mouth")  # row order of :meth:`FaceMesh.boxes`
MESH_POINTS = 468
# image-left eye (the person's right), image-right eye: the official get_boxes.py points
OFFICIAL_EYE_POINTS = (np.array([226, 230, 223, 245]), np.array([446, 450, 465, 443]))


def _points(connections) -> np.ndarray:
    return np.array(sorted({i for edge in connections for i in edge}), dtype=np.int64)


class FaceMesh:
    """Per-frame part boxes of the most prominent face of an RGB frame."""

    def __init__(self, min_confidence: float = 0.5):
        os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logs would flood stderr
        try:
            with quiet_native_stderr():
                from mediapipe.python.solutions import face_mesh
                from mediapipe.python.solutions import face_mesh_connections as conn
        except ImportError:
            raise UserError("face boxes need mediapipe: pip install 'personalive[train]'") from None
        self._parts = [np.arange(MESH_POINTS), OFFICIAL_EYE_POINTS[0], OFFICIAL_EYE_POINTS[1],
                       _points(conn.FACEMESH_LIPS)]
        # its graph threads print banners while starting: build it and warm it up inside one silenced window
        with quiet_native_stderr():
            self._mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                            min_detection_confidence=min_confidence)
            self._mesh.process(np.zeros((128, 128, 3), np.uint8))
        # its landmark graph prints a warning at its first face; silenced then only: fd 2 is shared with
        # the progress bars, which a redirection on every frame would blank
        self._first_face = True

    def boxes(self, frame: np.ndarray) -> np.ndarray | None:
        """``(4, 4)`` float32 boxes in :data:`PARTS` order, or ``None`` when no face is found."""
        h, w = frame.shape[:2]
        if self._first_face:
            with quiet_native_stderr():
                result = self._mesh.process(np.ascontiguousarray(frame))
            self._first_face = not result.multi_face_landmarks
        else:
            result = self._mesh.process(np.ascontiguousarray(frame))
        if not result.multi_face_landmarks:
            return None
        marks = result.multi_face_landmarks[0].landmark
        pts = np.array([(p.x * w, p.y * h) for p in marks[:MESH_POINTS]], dtype=np.float32)
        out = np.empty((len(PARTS), 4), np.float32)
        for k, idx in enumerate(self._parts):
            sel = pts[idx]
            out[k, :2], out[k, 2:] = sel.min(0), sel.max(0)
        # points may fall outside the frame (a face at the edge): a box is only meaningful inside it
        np.clip(out, 0, [w, h, w, h], out=out)
        return out

    def close(self) -> None:
        self._mesh.close()
