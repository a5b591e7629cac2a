import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from personalive_cli.serve.uploads import UploadError, UploadLimits, decode_camera_jpeg, decode_portrait


def _encoded(fmt: str, size=(64, 48), mode="RGB") -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).convert(mode).save(out, format=fmt)
    return out.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` × ``height`` with almost no data: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_real_image_decodes_to_rgb(fmt):
    rgb = decode_portrait(_encoded(fmt))
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8


def test_alpha_and_greyscale_become_rgb():
    assert decode_portrait(_encoded("PNG", mode="RGBA")).shape == (48, 64, 3)
    assert decode_portrait(_encoded("PNG", mode="L")).shape == (48, 64, 3)


@pytest.mark.parametrize(("data", "says"), [
    (b"", "empty"),
    (b"hello, this is not an image at all" * 10, "not an image"),
    (b"%PDF-1.4\n" + b"0" * 500, "not an image"),
])
def test_non_images_are_refused_with_a_reason(data, says):
    with pytest.raises(UploadError, match=says):
        decode_portrait(data)


def test_a_truncated_image_is_refused():
    data = _encoded("JPEG", size=(256, 256))
    with pytest.raises(UploadError, match="damaged or truncated"):
        decode_portrait(data[: len(data) // 2])


def test_too_many_bytes_are_refused_before_decoding():
    with pytest.raises(UploadError, match="limit is"):
        decode_portrait(_encoded("PNG"), UploadLimits(max_bytes=100))


def test_a_huge_image_is_refused_from_its_header():
    bomb = _png_claiming(60000, 60000)  # 3.6 gigapixels in a few hundred bytes
    assert len(bomb) < 1000
    with pytest.raises(UploadError, match="MP"):
        decode_portrait(bomb)


def test_the_pixel_limit_is_ours():
    with pytest.raises(UploadError, match="64×48 px"):
        decode_portrait(_encoded("PNG"), UploadLimits(max_pixels=1000))


def test_formats_outside_the_list_are_refused():
    with pytest.raises(UploadError, match="TIFF images are not accepted"):
        decode_portrait(_encoded("TIFF"))


def test_a_tiny_image_is_refused():
    with pytest.raises(UploadError, match="at least"):
        decode_portrait(_encoded("PNG", size=(8, 8)))


def test_camera_frames_must_be_jpeg_and_bad_ones_are_skipped():
    assert decode_camera_jpeg(_encoded("JPEG")).shape == (48, 64, 3)
    assert decode_camera_jpeg(_encoded("PNG")) is None
    assert decode_camera_jpeg(b"garbage") is None
