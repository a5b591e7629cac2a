import numpy as np
import pytest

from personalive_cli.errors import UserError
from personalive_cli.faces.crop import FaceCropper, crop_square
from personalive_cli.io.images import read_image
from personalive_cli.io.video import VideoReader


def test_crop_square_pads_at_borders():
    img = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    out = crop_square(img, 0, 0, 8, 8)
    assert out.shape == (8, 8, 3)
    assert np.array_equal(out[4:, 4:], img[:4, :4])  # the part inside the frame is unchanged
    assert np.array_equal(out[0, 0], img[0, 0])  # outside is edge-padded


def test_auto_crop_follows_face_and_is_smooth(demo_drive):
    pytest.importorskip("mediapipe")
    frames = list(VideoReader(demo_drive).iter_frames(0, 30))
    cropper = FaceCropper("auto", 256)
    try:
        crops = [c for f in frames for c in cropper.crop(f)]
        states = []
        for f in frames[:10]:
            cropper.crop(f)
            states.append(cropper._state)
    finally:
        cropper.close()
    assert len(crops) == 30 and crops[0].shape == (256, 256, 3)
    centres = np.array([s[:2] for s in states])
    assert np.abs(np.diff(centres, axis=0)).max() < 8  # smoothed: no jumps of more than a few pixels


def test_leading_faceless_frames_are_held_not_lost(demo_ref):
    pytest.importorskip("mediapipe")
    face = read_image(demo_ref)
    blank = np.zeros_like(face)
    cropper = FaceCropper("auto", 128)
    try:
        assert cropper.crop(blank) == [] and cropper.crop(blank) == []
        out = cropper.crop(face)
    finally:
        cropper.close()
    assert len(out) == 3


def test_none_mode_resizes_whole_frame():
    cropper = FaceCropper("none", 64)
    out = cropper.crop(np.zeros((90, 160, 3), np.uint8))
    assert len(out) == 1 and out[0].shape == (64, 64, 3)


def test_unknown_mode():
    with pytest.raises(UserError, match="unknown crop mode"):
        FaceCropper("sideways", 64)
