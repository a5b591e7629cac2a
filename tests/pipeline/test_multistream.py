"""Several streams batched into one pass give each stream the frames it gets alone."""

import numpy as np
import pytest
import torch
from helpers import DEMO_DRIVE, DEMO_REF

from personalive_cli.faces.crop import resize
from personalive_cli.io.images import read_image
from personalive_cli.io.video import VideoReader
from personalive_cli.pipeline.engine import EngineOptions, StreamEngine
from personalive_cli.pipeline.multistream import StreamGroup

SIZE = 64
STEPS = 5
OPTIONS = dict(keyframe_threshold=0.0, keyframe_after_steps=1, static_shapes=True)  # keyframes fire from step 3


@pytest.fixture(scope="module")
def streams(shared_dir):
    ref = read_image(DEMO_REF)
    frames = [resize(f, SIZE) for f in VideoReader(DEMO_DRIVE).iter_frames(0, 4 * STEPS)]
    # two viewers: the portrait and its mirror image, driven by the video forwards and backwards
    return [(ref, frames, 5), (np.ascontiguousarray(ref[:, ::-1]), frames[::-1], 6)]


def _engine(models, ref, seed):
    engine = StreamEngine(models, size=SIZE, seed=seed, options=EngineOptions(**OPTIONS))
    engine.set_reference(ref)
    return engine


@torch.no_grad()
def test_group_equals_streams_alone(tiny_models, streams):
    alone = []
    for ref, frames, seed in streams:
        engine = _engine(tiny_models, ref, seed)
        alone.append([engine.step(np.stack(frames[4 * i: 4 * i + 4])) for i in range(STEPS)])
    engines = [_engine(tiny_models, ref, seed) for ref, frames, seed in streams]
    firsts = [e.step(np.stack(frames[:4])) for e, (_, frames, _) in zip(engines, streams, strict=True)]
    group = StreamGroup(engines)
    together = [firsts] + [group.step([np.stack(f[4 * i: 4 * i + 4]) for _, f, _ in streams])
                           for i in range(1, STEPS)]
    assert int(group.engine.bank.count.min()) >= 1  # keyframes were added inside the batched steps
    for s in range(len(streams)):
        for i in range(STEPS):
            a, b = alone[s][i], together[i][s]
            assert a.warmup == b.warmup
            torch.testing.assert_close(b.latents, a.latents, atol=2e-4, rtol=1e-4)
            assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 1
    # the streams differ from each other: the batch did not mix them up
    assert (together[-1][0].latents - together[-1][1].latents).abs().max() > 1e-2


def test_group_refuses_what_it_cannot_batch(tiny_models, streams):
    ref = streams[0][0]
    dynamic = StreamEngine(tiny_models, size=SIZE, options=EngineOptions())
    dynamic.set_reference(ref)
    with pytest.raises(ValueError, match="static-shape"):
        StreamGroup([dynamic])
    fresh = _engine(tiny_models, ref, 1)
    with pytest.raises(ValueError, match="past its first step"):
        StreamGroup([fresh])
