"""The face-crop augmentation: the vectorised PiecewiseAffine map equals albumentations' own, the
augmentor is deterministic in its generator, and its strength is the official one."""

from __future__ import annotations

import pickle

import numpy as np
from albumentations.augmentations.geometric.functional import create_piecewise_affine_maps

from personalive_cli.training.augment import FaceAugmentor, aspect_jitter, face_photometric, idw_maps


def test_idw_maps_equal_the_library_loop():
    for shape, grid, scale in (((23, 31), (4, 4), 0.1), ((16, 16), (3, 5), 0.03)):
        ours = idw_maps(shape, grid, scale, False, np.random.default_rng(7))
        theirs = create_piecewise_affine_maps(shape, grid, scale, False, np.random.default_rng(7))
        for a, b in zip(ours, theirs, strict=True):
            assert a.shape == b.shape == shape and a.dtype == b.dtype == np.float32
            np.testing.assert_allclose(a, b, atol=1e-3)
        assert np.abs(ours[0] - np.arange(shape[1])[None]).max() > 0.1  # it does move pixels


def test_augmentor_is_deterministic_and_official_strength():
    y, x = np.mgrid[0:96, 0:80]
    patch = np.stack([x * 3, y * 2, (x + y) % 255], -1).astype(np.uint8)
    aug = FaceAugmentor()
    a = aug(patch, np.random.default_rng(1), 1, 1.2)
    b = pickle.loads(pickle.dumps(aug))(patch, np.random.default_rng(1), 1, 1.2)  # as in a DataLoader worker
    c = aug(patch, np.random.default_rng(2), 1, 1.2)
    assert a.shape == patch.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # GaussNoise alone at the official strength: std sqrt(10)..sqrt(50) on the 0-255 scale, not 2.x's 51-112
    noise = face_photometric().transforms[2]
    noise.set_random_seed(3)
    flat = np.full((64, 64, 3), 128, np.uint8)
    std = (noise(image=flat)["image"].astype(float) - 128).std()
    assert 2.5 < std < 7.5


def test_aspect_jitter_stretches_one_axis():
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, 18:22] = 255  # a vertical bar 4 px wide
    wide = aspect_jitter(img, 1, 1.5)
    assert wide.shape == img.shape
    assert (wide[20, :, 0] > 127).sum() == 6  # the bar is 1.5x wider
    tall = aspect_jitter(img, 0, 1.5)
    assert (tall[20, :, 0] > 127).sum() == 4  # stretching rows keeps the bar's width
    assert aspect_jitter(img, 1, 1.0) is img
