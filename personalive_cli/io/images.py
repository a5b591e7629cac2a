"""Reading a reference portrait."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from personalive_cli.errors import UserError


def read_image(path: str | Path) -> np.ndarray:
    """Any image PIL reads, as uint8 RGB ``(h, w, 3)`` (EXIF orientation applied, alpha dropped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"reference image not found: {path}")
    try:
        with Image.open(path) as im:
            from PIL import ImageOps

            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"cannot read reference image {path}: {exc}") from None


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``(h, w, 3)`` to ``(size, size, 3)`` with Lanczos (the official reference resize)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))
