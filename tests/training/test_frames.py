"""Random frame access: both readers return exactly the frames sequential decoding returns; bad files
are CorruptVideo (the dataset skips them), a bad reader name a UserError."""

from __future__ import annotations

import importlib.util

import pytest

from personalive_cli.errors import UserError
from personalive_cli.io.video import VideoReader
from personalive_cli.training.frames import BACKENDS, DEFAULT_BACKEND, CorruptVideo, frame_opener, open_frames

NO_DECORD = pytest.mark.skipif(importlib.util.find_spec("decord") is None, reason="decord2 is not installed")
READERS = [pytest.param(b, marks=NO_DECORD) if b == "decord" else b for b in BACKENDS]


@pytest.mark.parametrize("backend", READERS)
def test_random_access_matches_sequential_decoding(data_dir, backend):
    path = data_dir / "videos" / "long.mp4"
    sequential = list(VideoReader(path).iter_frames())
    indices = [71, 3, 40, 41, 3, 0, 79]
    with open_frames(path, backend) as video:
        assert len(video) == 80
        frames = video.read(indices)
        assert frames.shape == (7, 128, 128, 3) and frames.dtype.name == "uint8"
        for frame, i in zip(frames, indices, strict=True):
            assert (frame == sequential[i]).all(), i
        with pytest.raises(IndexError):
            video.read([80])


@pytest.mark.parametrize("backend", READERS)
def test_unreadable_files(tmp_path, backend):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 4000)
    with pytest.raises(CorruptVideo):
        open_frames(junk, backend)
    with pytest.raises(CorruptVideo):
        open_frames(tmp_path / "absent.mp4", backend)


def test_backend_choice():
    assert DEFAULT_BACKEND == "pyav"  # see frames.py: no slower than decord, and exact on edit lists
    assert frame_opener(None) is frame_opener(DEFAULT_BACKEND)
    with pytest.raises(UserError, match="unknown frame reader"):
        frame_opener("opencv")
