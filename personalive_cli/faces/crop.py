"""Square face crops that follow the face smoothly over time.

``auto``: detect the face, take a square of ``scale`` × the face box's larger side around its
centre, smooth centre and side with an exponential moving average so the crop does not jitter,
and resize to the working size. Frames where detection fails keep the last box. ``none``: resize
the whole frame (squashing non-square frames, as the official code does for the reference).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from personalive_cli.errors import UserError
from personalive_cli.faces.detector import Box, FaceDetector

log = logging.getLogger(__name__)

CROP_MODES = ("auto", "none")
MIN_FACE_PX = 64  # below this the 512² model upsamples more than 8×: features smear


@dataclass
class CropConfig:
    scale: float = 2.0        # square side / face-box side: the framing of the official demo portraits
    smoothing: float = 0.8    # EMA weight of the previous box (0 = no smoothing)
    search_frames: int = 30   # how many leading frames may lack a face before giving up


def square_around(box: Box, scale: float) -> tuple[float, float, float]:
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * scale


def crop_square(frame: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """Crop a square (padding with edge pixels where it leaves the frame) and resize to ``size``."""
    h, w = frame.shape[:2]
    half = side / 2
    x0, y0 = int(round(cx - half)), int(round(cy - half))
    s = max(1, int(round(side)))
    pad = max(0, -x0, -y0, x0 + s - w, y0 + s - h)
    if pad:
        frame = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        x0, y0 = x0 + pad, y0 + pad
    patch = frame[y0 : y0 + s, x0 : x0 + s]
    return resize(patch, size)


def resize(frame: np.ndarray, size: int) -> np.ndarray:
    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.LANCZOS))


class FaceCropper:
    """Stateful cropper for one video: :meth:`crop` consecutive frames, then :meth:`flush`.

    Leading frames without a face are held back until the first face is found and then cropped
    with that box, so every input frame yields exactly one output frame.
    """

    def __init__(self, mode: str, size: int, config: CropConfig | None = None):
        if mode not in CROP_MODES:
            raise UserError(f"unknown crop mode {mode!r}; choose one of {', '.join(CROP_MODES)}")
        self.mode, self.size, self.config = mode, size, config or CropConfig()
        self._detector = FaceDetector() if mode == "auto" else None
        self._state: tuple[float, float, float] | None = None
        self._held: list[np.ndarray] = []

    def crop(self, frame: np.ndarray) -> list[np.ndarray]:
        """Cropped frames ready so far (usually exactly this frame's crop)."""
        if self._detector is None:
            return [resize(frame, self.size)]
        box = self._detector.detect(frame)
        if box is not None:
            target = square_around(box, self.config.scale)
            if self._state is None:
                self._state = target
            else:
                a = self.config.smoothing
                self._state = tuple(a * p + (1 - a) * t for p, t in zip(self._state, target, strict=True))
        if self._state is None:
            self._held.append(frame)
            if len(self._held) >= self.config.search_frames:
                raise UserError(f"no face found in the first {len(self._held)} driving frames (try --crop none)")
            return []
        held, self._held = self._held, []
        return [crop_square(f, *self._state, self.size) for f in [*held, frame]]

    def flush(self) -> list[np.ndarray]:
        if self._held:
            raise UserError(f"no face found in the {len(self._held)} driving frames (try --crop none)")
        return []

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()


def crop_reference(image: np.ndarray, mode: str, size: int) -> np.ndarray:
    """The reference portrait at ``size``. A square image is resized whole (as the official code does);
    a non-square one is face-centred with ``auto`` and squashed with ``none``. With ``auto`` the faces
    are looked for in either case, to warn about a reference that will animate poorly."""
    faces = None
    if mode == "auto":
        detector = FaceDetector()
        try:
            faces = detector.detect_all(image)
        finally:
            detector.close()
    _warn_about_reference(image, faces)
    if mode == "none" or image.shape[0] == image.shape[1]:
        return resize(image, size)
    if not faces:
        raise UserError("no face found in the reference image (try --crop none)")
    return crop_square(image, *square_around(faces[0], CropConfig.scale), size)


def _warn_about_reference(image: np.ndarray, faces: list[Box] | None) -> None:
    """Warnings (not errors: the result may still be what the user wants) for a reference showing
    several faces, or a face too small for the model to see its features."""
    h, w = image.shape[:2]
    if faces and len(faces) > 1:
        x0, y0, x1, y1 = faces[0]
        log.warning("the reference shows %d faces; animating the largest (%d×%d px at x=%d, y=%d)",
                    len(faces), x1 - x0, y1 - y0, x0, y0)
    side = max(faces[0][2] - faces[0][0], faces[0][3] - faces[0][1]) if faces else min(h, w)
    if side < MIN_FACE_PX:
        what = f"the reference face is {side:.0f} px wide" if faces else f"the reference is {w}×{h} px"
        log.warning("%s: a face under %d px will look poor (use a larger portrait)", what, MIN_FACE_PX)
