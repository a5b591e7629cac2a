"""Per-frame face / eye / mouth boxes of a clip (``boxes/<id>.npz``, see ``personalive_cli.training.clips``).

A frame where FaceMesh finds no face copies the previous frame's boxes (``detected`` False there), as
the official ``tools/get_boxes.py`` does; a clip whose first frame has no face has nothing to copy and
is dropped (the official dataset resamples such clips at training time; dropping them here keeps
the manifest honest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from personalive_cli.faces.mesh import PARTS, FaceMesh
from personalive_cli.io.video import VideoReader
from personalive_cli.training.clips import BOX_NAMES, ClipBoxes

assert PARTS == BOX_NAMES  # FaceMesh rows map one to one onto the boxes file's arrays


class BoxTrack:
    """Boxes of consecutive frames: :meth:`add` each frame's FaceMesh result, then :meth:`result`."""

    def __init__(self) -> None:
        self._boxes: list[np.ndarray] = []
        self._detected: list[bool] = []

    def __len__(self) -> int:
        return len(self._boxes)

    def add(self, boxes: np.ndarray | None) -> bool:
        """Record one frame's ``(4, 4)`` boxes (``None``: no face, the previous boxes are copied).
        False when the first frame has no face: the clip is to be dropped."""
        if boxes is None:
            if not self._boxes:
                return False
            self._boxes.append(self._boxes[-1])
            self._detected.append(False)
        else:
            self._boxes.append(np.asarray(boxes, np.float32))
            self._detected.append(True)
        return True

    def result(self) -> ClipBoxes:
        stacked = np.stack(self._boxes).reshape(len(self), len(BOX_NAMES), 4)
        return ClipBoxes(**{name: stacked[:, k] for k, name in enumerate(BOX_NAMES)},
                         detected=np.array(self._detected, bool))


def track_frames(frames: Iterable[np.ndarray], mesh: FaceMesh,
                 on_frame: Callable[[], None] | None = None) -> ClipBoxes | None:
    """Boxes of every frame, or ``None`` when the first frame has no face (decoding stops there)."""
    track = BoxTrack()
    for frame in frames:
        if not track.add(mesh.boxes(frame)):
            return None
        if on_frame:
            on_frame()
    return track.result() if len(track) else None


def boxes_of_video(path: Path, mesh: FaceMesh, on_frame: Callable[[], None] | None = None) -> ClipBoxes | None:
    return track_frames(VideoReader(path, role="clip").iter_frames(), mesh, on_frame)
