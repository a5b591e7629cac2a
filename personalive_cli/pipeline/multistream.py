"""Several streams on one device: their steps batched into one denoising-UNet pass and one VAE decode.

The server case: one GPU, many viewers, each animating their own portrait. Batching N windows into one
pass keeps the GPU's matrix units busy where a single 16-frame window does not, so the aggregate frame
rate grows with N while each stream's step takes longer (benchmarks/README.md: `multi-stream`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from personalive_cli.pipeline.engine import CHUNK, StepOutput, StreamEngine
from personalive_cli.pipeline.keyframes import KeyframeBank


class StreamGroup:
    """N streams (one reference each, the same models) stepped together.

    ``engines``: `StreamEngine`s in the static-shape mode (their keyframe banks have the same shape and
    their verdicts stay on the device), each past its first step (whose 12 warm-up frames are its own)
    and all at the same step. The group takes their state over: from then on step them only through
    :meth:`step`. Each stream keeps its own noise source, so its frames are the ones it would give alone
    (up to the float rounding of a larger batch; tests/pipeline/test_multistream.py).
    """

    def __init__(self, engines: list[StreamEngine]):
        if not engines:
            raise ValueError("a stream group needs at least one engine")
        first = engines[0]
        for e in engines:
            if not e.options.static_shapes:
                raise ValueError("stream groups need engines in the static-shape mode (EngineOptions.static_shapes)")
            if e.steps == 0 or e.steps != first.steps:
                raise ValueError("every engine of a group must be past its first step, all at the same step")
            if e.models is not first.models or e.size != first.size or e.dtype != first.dtype:
                raise ValueError("the engines of a group must share their models, size and dtype")
        self.members = list(engines)
        merged = copy.copy(first)  # models, scheduler, options; the state is replaced below
        merged.graph = None
        merged._count_copy = None
        merged.window = torch.cat([e.window for e in engines])
        merged.poses = torch.cat([e.poses for e in engines])
        merged.motions = torch.cat([e.motions for e in engines])
        merged.ref_latent = torch.cat([e.ref_latent for e in engines])
        merged.clip = torch.cat([e.clip for e in engines])
        merged.bank = KeyframeBank.stack([e.bank for e in engines])
        self.engine = merged

    def __len__(self) -> int:
        return len(self.members)

    @torch.no_grad()
    def step(self, frames: list[np.ndarray]) -> list[StepOutput]:
        """4 driving frames per stream, uint8 (4, S, S, 3) each -> one `StepOutput` per stream."""
        if len(frames) != len(self.members):
            raise ValueError(f"{len(self.members)} streams but {len(frames)} sets of frames")
        merged, h = self.engine, self.engine.size // 8
        poses, motions, noise = [], [], []
        for engine, chunk in zip(self.members, frames, strict=True):
            if chunk.shape[0] != CHUNK:
                raise ValueError(f"a step takes {CHUNK} frames per stream, got {chunk.shape[0]}")
            images = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.uint8)).to(merged.device)
            noise.append(engine._draw((1, 4, CHUNK, h, h)))  # each stream's own noise, in its own order
            pose, motion = engine._encode_driving(engine._normalise(images))  # the front end: per stream
            poses.append(pose)
            motions.append(motion)
        clean, pixels, _ = merged._denoise(torch.cat(poses), torch.cat(motions), torch.cat(noise), True)
        merged.steps += 1
        merged._note_keyframe_count()
        pixels = pixels.cpu().numpy().reshape(len(self.members), CHUNK, *pixels.shape[1:])
        warmup = merged.steps <= 3
        return [StepOutput(frames=pixels[i], latents=clean[i: i + 1], warmup=warmup, keyframe_added=None)
                for i in range(len(self.members))]
