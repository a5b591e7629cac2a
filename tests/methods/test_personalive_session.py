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


def test_temporal_attention_option_sets_the_processors(tiny_weights):
    """`--option temporal_attention=chunk_causal` runs weights trained with that ablation as they were trained."""
    from personalive_cli.errors import UserError
    from personalive_cli.methods.personalive import PersonaLive
    from personalive_cli.models.attention_processor import ChunkCausalAttnProcessor
    from personalive_cli.models.motion_modules import TemporalAttention

    def processors(method):
        return {type(m.processor) for m in method.models.denoising_unet.modules() if isinstance(m, TemporalAttention)}

    assert ChunkCausalAttnProcessor not in processors(PersonaLive(weights=tiny_weights, size=64))
    assert processors(PersonaLive(weights=tiny_weights, size=64, temporal_attention="chunk_causal")) == {
        ChunkCausalAttnProcessor}
    with pytest.raises(UserError, match="chunk_causal"):
        PersonaLive(weights=tiny_weights, size=64, temporal_attention="causal")
