"""Compiled, fused and channels-last steps give the frames of the eager step (CPU, tiny model).

Tolerances: latents within 3e-4 absolute (the window's values are O(1); reordered float sums differ
by ~1e-5 per layer of the tiny UNet), decoded frames within 2 of 255 levels.
"""

import numpy as np
import pytest
import torch
from helpers import DEMO_DRIVE, DEMO_REF

from personalive_cli.faces.crop import resize
from personalive_cli.io.images import read_image
from personalive_cli.io.video import VideoReader
from personalive_cli.pipeline.acceleration import SpeedOptions, accelerate_models
from personalive_cli.pipeline.components import PersonaLiveConfig, PersonaLiveModels
from personalive_cli.pipeline.engine import EngineOptions, StreamEngine

SIZE = 64
STEPS = 6


@pytest.fixture(scope="module")
def inputs(shared_dir):
    ref = read_image(DEMO_REF)
    frames = [resize(f, SIZE) for f in VideoReader(DEMO_DRIVE).iter_frames(0, 4 * STEPS)]
    return ref, frames


def _run(inputs, speed: SpeedOptions, static: bool):
    models = PersonaLiveModels.random(PersonaLiveConfig.tiny(), seed=0)
    accelerate_models(models, speed, torch.device("cpu"))
    ref, frames = inputs
    engine = StreamEngine(models, size=SIZE, seed=2, options=EngineOptions(
        keyframe_threshold=0.0, keyframe_after_steps=2, static_shapes=static))
    engine.set_reference(ref)
    return [engine.step(np.stack(frames[4 * i: 4 * i + 4])) for i in range(STEPS)]


def _assert_same(got, want):
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.latents, b.latents, atol=3e-4, rtol=1e-4)
        assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 2


@pytest.fixture(scope="module")
def eager(inputs):
    return _run(inputs, SpeedOptions(), static=True)


@torch.no_grad()
def test_fused_qkv_and_channels_last_match_eager(inputs, eager):
    _assert_same(_run(inputs, SpeedOptions(fuse_qkv=True, channels_last=True), static=True), eager)


@pytest.mark.slow  # compiling the tiny model's networks takes minutes on 2 cores
@torch.no_grad()
def test_compiled_step_matches_eager(inputs, eager):
    _assert_same(_run(inputs, SpeedOptions(compile=True), static=True), eager)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@torch.no_grad()
def test_cuda_graph_step_matches_eager(inputs):
    from personalive_cli.pipeline.acceleration import StepGraph

    ref, frames = inputs
    outs = {}
    for graphs in (False, True):
        models = PersonaLiveModels.random(PersonaLiveConfig.tiny(), seed=0).to("cuda")
        engine = StreamEngine(models, size=SIZE, device="cuda", seed=2, options=EngineOptions(
            keyframe_threshold=0.0, keyframe_after_steps=2, static_shapes=True))
        engine.graph = StepGraph() if graphs else None
        engine.set_reference(ref)
        outs[graphs] = [engine.step(np.stack(frames[4 * i: 4 * i + 4])) for i in range(STEPS)]
        assert engine.num_keyframes == 3
    _assert_same(outs[True], outs[False])
