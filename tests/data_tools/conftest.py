"""Short face videos cut from the shared demo (decoding a few small frames is faster than the demo)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_video
from PIL import Image

from personalive_cli.io.video import VideoReader


@pytest.fixture(scope="session")
def demo_frames(demo_drive) -> list[np.ndarray]:
    """The demo's first 40 frames at 128² (a face-centred portrait video)."""
    return [np.asarray(Image.fromarray(f).resize((128, 128), Image.LANCZOS))
            for f in VideoReader(demo_drive).iter_frames(0, 40)]


@pytest.fixture
def face_videos(tmp_path, demo_frames):
    """A folder of three 10-frame 128² face videos at 25 fps (different parts of the demo)."""

    def make(n: int = 3, folder: str = "raw"):
        src = tmp_path / folder
        src.mkdir(parents=True)
        for k in range(n):
            write_video(src / f"clip{k}.mp4", demo_frames[10 * k: 10 * k + 10], fps=25)
        return src

    return make
