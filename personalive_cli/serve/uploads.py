"""Portrait uploads, decoded defensively: the bytes come from a browser, so nothing about them is trusted.

Checked in the order that costs least first: the byte count, the format named in the header, the pixel
count read from the header (before any pixel is decoded, so a decompression bomb never expands), PIL's
structural ``verify()``, and finally a full decode inside the same limits."""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from personalive_cli.errors import UserError

# Formats a camera or a phone writes; others (PSD, EPS through Ghostscript, ...) are refused unopened.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")


class UploadError(UserError):
    """An upload the server refuses; the message is shown to the viewer as it is."""


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 15 * 1024 * 1024
    max_pixels: int = 40_000_000  # a 48 MP phone photo is refused; 40 MP decodes to 120 MB of RGB
    min_side: int = 32


def decode_portrait(data: bytes, limits: UploadLimits = UploadLimits()) -> np.ndarray:
    """The uploaded image as uint8 RGB ``(h, w, 3)``, or :class:`UploadError` with a reason a person
    understands (never another exception type)."""
    if not data:
        raise UploadError("the upload is empty")
    if len(data) > limits.max_bytes:
        raise UploadError(f"the image is {len(data) / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.0f} MB")
    try:
        with warnings.catch_warnings():
            # PIL warns (and above twice its limit, raises) about bombs; our own limit comes first
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                _check_header(probe, limits)
                probe.verify()
            with Image.open(io.BytesIO(data)) as im:
                _check_header(im, limits)
                im = ImageOps.exif_transpose(im)
                rgb = np.asarray(im.convert("RGB")).copy()
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # PIL's own bomb check fires inside open() for images far above any limit of ours
        raise UploadError(f"the image is too large (over {limits.max_pixels / 1e6:.0f} MP)") from None
    except UnidentifiedImageError:
        raise UploadError("that file is not an image this server accepts "
                          f"({', '.join(f.lower() for f in ALLOWED_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, IndexError, TypeError, struct.error):
        # PIL's decoders report truncated or malformed data with any of these
        raise UploadError("the image is damaged or truncated and cannot be decoded") from None
    return rgb


def _check_header(im: Image.Image, limits: UploadLimits) -> None:
    if im.format not in ALLOWED_FORMATS:
        raise UploadError(f"{im.format or 'this'} images are not accepted; use "
                          f"{', '.join(f.lower() for f in ALLOWED_FORMATS)}")
    w, h = im.size
    if w * h > limits.max_pixels:
        raise UploadError(f"the image is {w}×{h} px ({w * h / 1e6:.0f} MP); the limit is "
                          f"{limits.max_pixels / 1e6:.0f} MP")
    if min(w, h) < limits.min_side:
        raise UploadError(f"the image is {w}×{h} px; a portrait needs at least {limits.min_side} px a side")



def decode_camera_jpeg(data: bytes, max_pixels: int = 4_000_000) -> np.ndarray | None:
    """One camera frame the page sent as JPEG (WebSocket transport), or ``None`` when it does not decode
    as a JPEG within ``max_pixels``: a bad frame is skipped, it does not end the session."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or im.size[0] * im.size[1] > max_pixels:
                return None
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error):
        return None


def encode_jpeg(frame: np.ndarray, quality: int = 85) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=quality)
    return out.getvalue()
