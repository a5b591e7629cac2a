"""Frame ids drawn as a strip of black and white cells under a picture.

WebRTC media carries no application data per frame, and the RTP timestamps of each direction start at a
random offset the page cannot see, so the page draws each camera frame's id under it and the server draws
the id of the input frame an output animates under the output; the page crops the strip off before showing
anything. Cells are wide and only black or white, so they survive lossy video coding (VP8 at a low
bitrate) intact; a checksum catches the rare misread. static/app.js holds the same layout."""

from __future__ import annotations

import numpy as np

STRIP = 16   # rows under the picture
CELLS = 16   # 12 bits of id + 4 bits of checksum
ID_BITS = 12
ID_MODULO = 1 << ID_BITS


def checksum(frame_id: int) -> int:
    return (frame_id * 7 + 5 + (frame_id >> 4) + (frame_id >> 8)) & 0xF


def _bits(frame_id: int) -> list[int]:
    frame_id %= ID_MODULO
    value = frame_id | (checksum(frame_id) << ID_BITS)
    return [(value >> i) & 1 for i in range(CELLS)]


def add_strip(frame: np.ndarray, frame_id: int) -> np.ndarray:
    """``frame`` (h, w, 3) with ``STRIP`` rows added below encoding ``frame_id``."""
    h, w = frame.shape[:2]
    strip = np.zeros((STRIP, w, 3), np.uint8)
    cell = w // CELLS
    for i, bit in enumerate(_bits(frame_id)):
        if bit:
            strip[:, i * cell:(i + 1) * cell] = 255
    return np.concatenate([frame, strip], axis=0)


def read_strip(frame: np.ndarray) -> tuple[np.ndarray, int | None]:
    """The picture above the strip, and the id it carries (``None`` when it does not read back)."""
    picture, strip = frame[:-STRIP], frame[-STRIP:]
    w = strip.shape[1]
    cell = w // CELLS
    # the middle of each cell, away from the edges a codec smears into its neighbours
    rows = strip[STRIP // 4: STRIP - STRIP // 4].astype(np.float32).mean(axis=(0, 2))
    value = 0
    for i in range(CELLS):
        middle = rows[i * cell + cell // 4: (i + 1) * cell - cell // 4]
        if middle.size and middle.mean() > 127:
            value |= 1 << i
    frame_id = value & (ID_MODULO - 1)
    if value >> ID_BITS != checksum(frame_id):
        return picture, None
    return picture, frame_id
