"""The motion encoder's face-crop augmentation (the official ``FaceAugmentor``), on albumentations 2.

Per crop: aspect jitter (stretch one axis by ``scale`` and centre-crop back), then ColorJitter,
PiecewiseAffine and GaussNoise, all with p = 1. The official code ran on albumentations 1.4.12; two of
its transforms changed meaning in 2.x, and the settings here restore the 1.4.12 strength:

* **GaussNoise**: 1.4 drew a variance of 10-50 (0-255 scale); 2.x takes a standard deviation as a
  fraction of 255 and defaults to 0.2-0.44, ten times stronger. We pass sqrt(10)/255-sqrt(50)/255.
  (2.x draws the std uniformly where 1.4 drew the variance: a negligible difference.)
* **PiecewiseAffine**: 1.4 jittered a 4x4 grid of control points with std ``scale * side`` and
  warped by triangles (scikit-image); 2.x jitters with std ``scale * side / 3`` and blends the
  control points' displacements by inverse squared distance. We pass 3x the official scale
  (0.06-0.12 for 0.02-0.04), the same control-point displacement. 2.x also builds its map with a
  Python loop over every pixel (about a second for a 200² crop); :class:`PiecewiseAffine` here is
  albumentations' transform with that map computed in one vectorised step (same formula, same
  random draws; ``tests/training/test_augment.py`` checks it against the library's function).
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np

from personalive_cli.errors import UserError

OFFICIAL_PIECEWISE_SCALE = (0.02, 0.04)  # albumentations 1.4.12 units
# albumentations 2.x draws control-point jitter with std scale*side/3 where 1.4 used scale*side
PIECEWISE_SCALE = (3 * OFFICIAL_PIECEWISE_SCALE[0], 3 * OFFICIAL_PIECEWISE_SCALE[1])
NOISE_STD = (10 ** 0.5 / 255, 50 ** 0.5 / 255)  # 1.4.12's default variance 10-50 on the 0-255 scale


def _albumentations():
    try:
        import albumentations as A
    except ImportError:
        raise UserError("the training datasets need albumentations: "
                        "pip install 'personalive[train]'") from None
    return A


def idw_maps(shape: tuple[int, int], grid: tuple[int, int], scale: float, absolute_scale: bool,
             random_generator: np.random.Generator) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``albumentations.augmentations.geometric.functional.create_piecewise_affine_maps`` (2.0.8),
    vectorised: the same random draw and the same inverse-squared-distance blend of the jittered
    control points, for all pixels at once. -> (map_x, map_y), float32 (h, w), or (None, None)."""
    height, width = shape[:2]
    rows, cols = grid
    if height <= 0 or width <= 0 or rows <= 0 or cols <= 0:
        raise ValueError("Dimensions must be positive")
    if scale <= 0:
        return None, None
    xx, yy = np.meshgrid(np.linspace(0, width - 1, cols, dtype=np.float32),
                         np.linspace(0, height - 1, rows, dtype=np.float32))
    jitter_scale = scale / 3 if absolute_scale else scale * min(width, height) / 3
    jitter = random_generator.normal(0, jitter_scale, (rows, cols, 2)).astype(np.float32)
    dst_x = np.clip(xx + jitter[..., 1], 0, width - 1).ravel()
    dst_y = np.clip(yy + jitter[..., 0], 0, height - 1).ravel()
    dx = np.arange(width, dtype=np.float32)[None, :, None] - xx.ravel()  # (1, w, k)
    dy = np.arange(height, dtype=np.float32)[:, None, None] - yy.ravel()  # (h, 1, k)
    weights = dx * dx + dy * dy  # (h, w, k), then 1 / (d² + 1e-8) in place
    weights += np.float32(1e-8)
    np.reciprocal(weights, out=weights)
    total = weights.sum(-1)
    map_x = np.clip(weights @ dst_x / total, 0, width - 1).astype(np.float32)
    map_y = np.clip(weights @ dst_y / total, 0, height - 1).astype(np.float32)
    return map_x, map_y


def _piecewise_affine_class():
    A = _albumentations()

    class PiecewiseAffine(A.PiecewiseAffine):
        """albumentations' PiecewiseAffine with its displacement map built by :func:`idw_maps`."""

        def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict:
            # the library's draws, in the library's order (rows, cols, scale from py_random; jitter
            # from random_generator), so a seeded transform gives the library's own result
            rows = max(2, self.py_random.randint(*self.nb_rows))
            cols = max(2, self.py_random.randint(*self.nb_cols))
            scale = self.py_random.uniform(*self.scale)
            map_x, map_y = idw_maps(params["shape"][:2], (rows, cols), scale, self.absolute_scale,
                                    self.random_generator)
            return {"map_x": map_x, "map_y": map_y}

    return PiecewiseAffine


def face_photometric():
    """ColorJitter, PiecewiseAffine and GaussNoise at the official strength, all p = 1, as one
    albumentations Compose. Seed it per call with ``set_random_state`` (see :class:`FaceAugmentor`)."""
    A = _albumentations()
    with warnings.catch_warnings():  # the "very slow" warning is about the loop replaced here
        warnings.filterwarnings("ignore", message=".*very slow.*")
        piecewise = _piecewise_affine_class()(scale=PIECEWISE_SCALE, p=1.0)
    return A.Compose([
        A.ColorJitter(brightness=(0.3, 1.3), contrast=0.3, saturation=0.3, hue=0.3, p=1.0),
        piecewise,
        A.GaussNoise(std_range=NOISE_STD, p=1.0),
    ])


def aspect_jitter(img: np.ndarray, axis: int, scale: float) -> np.ndarray:
    """Stretch ``axis`` (1: width, 0: height) by ``scale`` >= 1 and centre-crop back to the input size."""
    import cv2

    h, w = img.shape[:2]
    new_h, new_w = (int(h * scale), w) if axis == 0 else (h, int(w * scale))
    if (new_h, new_w) == (h, w):
        return img
    stretched = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, left = int(round((new_h - h) / 2)), int(round((new_w - w) / 2))
    return stretched[top:top + h, left:left + w]


class FaceAugmentor:
    """The face crop's augmentation, deterministic given a numpy generator. The albumentations Compose
    is built on first use, so a dataset pickled into DataLoader workers carries none of it."""

    def __init__(self):
        self._compose = None

    def __call__(self, patch: np.ndarray, rng: np.random.Generator, axis: int, scale: float) -> np.ndarray:
        """uint8 (h, w, 3) -> uint8 (h, w, 3); ``axis``/``scale``: the aspect jitter (drawn per clip in
        stage III, per sample in stages I/II); everything else is drawn from ``rng``."""
        if self._compose is None:
            self._compose = face_photometric()
        patch = np.ascontiguousarray(aspect_jitter(patch, axis, scale))
        self._compose.set_random_state(np.random.default_rng(int(rng.integers(2 ** 63))),
                                       random.Random(int(rng.integers(2 ** 63))))
        return self._compose(image=patch)["image"]

    def __getstate__(self):
        return {"_compose": None}
