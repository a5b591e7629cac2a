"""Frame-array checks and conversions shared by the metrics (uint8 RGB (n, h, w, 3) at the edges)."""

from __future__ import annotations

import numpy as np


def as_video(frames, name: str = "frames") -> np.ndarray:
    """Check and return a uint8 RGB video (n, h, w, 3); a single (h, w, 3) frame becomes n=1."""
    a = np.asarray(frames)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"{name}: expected uint8 RGB frames (n, h, w, 3), got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8, got {a.dtype}")
    if a.shape[0] == 0:
        raise ValueError(f"{name}: no frames")
    return a


def as_image(image, name: str = "image") -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"{name}: expected one uint8 RGB image (h, w, 3), got {a.shape} {a.dtype}")
    return a


def resolve_device(device) -> str:
    import torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return str(device)
