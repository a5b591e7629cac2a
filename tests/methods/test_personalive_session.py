"""The PersonaLive session: one output per driving frame whatever the length (end look-ahead padding)."""

import numpy as np
import pytest

from personalive_cli.methods.personalive import PersonaLiveSession
from personalive_cli.pipeline.engine import StreamEngine


@pytest.mark.parametrize("length", [1, 3, 4, 5, 9, 14])
def test_one_output_per_input(tiny_models, length):
    rng = np.random.default_rng(length)
    engine = StreamEngine(tiny_models, size=64)
    engine.set_reference(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    session = PersonaLiveSession(engine)
    frames = rng.integers(0, 255, (length, 64, 64, 3), dtype=np.uint8)
    outs = []
    for i in range(0, length, 3):  # pushes of uneven sizes
        outs += list(session.push(frames[i:i + 3]))
    outs += list(session.flush())
    assert len(outs) == length
    assert all(o.shape == (64, 64, 3) and o.dtype == np.uint8 for o in outs)
    # a driving frame's output leaves the window 3 steps after it entered: nothing before that
    assert engine.steps == (length + 3) // 4 + 3
