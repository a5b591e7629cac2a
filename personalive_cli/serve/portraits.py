"""An uploaded portrait made ready to animate: decoded safely, its face looked for, cropped to the size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from personalive_cli.errors import UserError
from personalive_cli.faces.crop import CropConfig, crop_square, resize, square_around
from personalive_cli.serve.uploads import UploadError, UploadLimits, decode_portrait


@dataclass
class Portrait:
    reference: np.ndarray  # what the method animates, (size, size, 3)
    face: bool | None      # None: not looked for (mediapipe absent)
    message: str
    width: int
    height: int


def prepare_portrait(data: bytes, limits: UploadLimits, size: int, crop: str) -> Portrait:
    """As ``animate`` treats a reference (a square image is used whole, a non-square one face-centred),
    except that an image with no face is refused here: the viewer can pick another at once."""
    image = decode_portrait(data, limits)
    h, w = image.shape[:2]
    try:
        faces = _faces(image)
    except UserError:
        faces = None  # the faces extra is absent: say so, and use the image whole
    if faces is None:
        return Portrait(resize(image, size), None, "face check unavailable on this server (install the "
                        "faces extra); the whole image is used", w, h)
    if not faces:
        raise UploadError("no face found in this image; pick a portrait where the face is clearly visible")
    if crop == "none" or h == w:
        reference = resize(image, size)
    else:
        reference = crop_square(image, *square_around(faces[0], CropConfig.scale), size)
    x0, y0, x1, y1 = faces[0]
    more = f" ({len(faces)} faces: the largest is animated)" if len(faces) > 1 else ""
    return Portrait(reference, True, f"face found, {x1 - x0:.0f}×{y1 - y0:.0f} px{more}", w, h)


def _faces(image: np.ndarray):
    from personalive_cli.faces.detector import FaceDetector

    detector = FaceDetector()
    try:
        return detector.detect_all(image)
    finally:
        detector.close()
