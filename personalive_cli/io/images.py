"""Reading a reference portrait (an image, or one frame of a video)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from personalive_cli.errors import UserError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts", ".y4m"}


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


def read_reference(path: str | Path, frame: int = 0) -> np.ndarray:
    """The reference portrait as uint8 RGB ``(h, w, 3)``: an image, or frame ``frame`` of a video
    (said on the log, since the user may not have meant it)."""
    path = Path(path)
    if frame < 0:
        raise UserError(f"--reference-frame must be 0 or more, got {frame}")
    if not path.is_file():
        raise UserError(f"reference image not found: {path}")
    from personalive_cli.io.video import VideoReader

    if path.suffix.lower() not in VIDEO_SUFFIXES:
        try:
            return read_image(path)
        except UserError as image_error:
            try:  # a video under another name is still used; anything else keeps the image's error
                reader = VideoReader(path, role="reference video")
            except UserError:
                raise image_error from None
    else:
        reader = VideoReader(path, role="reference video")
    if frame >= len(reader):
        raise UserError(f"--reference-frame {frame} is past the end of {path} ({len(reader)} frames)")
    log.warning("the reference %s is a video: using its frame %d (--reference-frame)", path.name, frame)
    return reader.read([frame])[0]
