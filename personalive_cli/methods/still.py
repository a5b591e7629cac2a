"""``still``: the reference portrait repeated for every driving frame.

The standard no-motion lower bound: any method that animates must beat it on motion metrics, and
it needs no weights, so it exercises every command end to end.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from personalive_cli.faces.crop import resize
from personalive_cli.registry import Method, Session


class _StillSession(Session):
    def __init__(self, reference: np.ndarray, size: int):
        super().__init__(frames_per_step=1, size=size)
        self.reference = reference

    def step(self, frames: np.ndarray) -> Iterator[np.ndarray]:
        for _ in frames:
            yield self.reference


class Still(Method):
    frames_per_step = 1
    uses_torch = False
    description = "the reference portrait repeated (no-motion lower bound); needs no weights"

    def start(self, reference: np.ndarray) -> Session:
        return _StillSession(resize(reference, self.size), self.size)
