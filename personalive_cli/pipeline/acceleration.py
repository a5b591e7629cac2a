"""Making the stream step fast: torch.compile, CUDA graphs, fused QKV projections, channels-last.

Each is a setting of :class:`SpeedOptions` (the personalive method's ``--compile`` / ``--cuda-graphs`` /
``--option fuse_qkv=true`` / ``--option channels_last=true``); none changes what is computed, only how:
compiled, captured and eager steps give the same frames up to float rounding (tests/pipeline/
test_acceleration.py states the tolerances). What each gives on which device: benchmarks/README.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class SpeedOptions:
    compile: bool = False        # torch.compile the denoising UNet, the VAE decoder and the front-end networks
    compile_mode: str = "default"  # torch.compile's mode ("max-autotune-no-cudagraphs" tunes kernels longer)
    cuda_graphs: bool = False    # replay the steady stream step from a CUDA graph (needs static shapes)
    fuse_qkv: bool = False       # one matrix product for Q, K and V of every spatial self-attention
    channels_last: bool = False  # NHWC memory layout for the convolutions


def accelerate_models(models, options: SpeedOptions, device: torch.device) -> float:
    """Apply ``options`` to ``models`` (a `PersonaLiveModels`) in place. Returns the seconds it took (the
    compilation itself happens lazily, on the first steps; see `StreamEngine.warmup_seconds`)."""
    if options.cuda_graphs and torch.device(device).type != "cuda":
        raise ValueError("CUDA graphs need a CUDA device")
    start = time.perf_counter()
    if options.fuse_qkv:
        for unet in (models.denoising_unet, models.reference_unet):
            for name in unet.reference_attention_names():
                unet.get_submodule(name).fuse_projections()
    if options.channels_last:
        for net in _convolutional(models):
            net.to(memory_format=torch.channels_last)
    if options.compile:
        for net in _compiled(models):
            # in place (nn.Module.compile): the module keeps its identity, attributes and methods
            net.compile(mode=options.compile_mode)
    return time.perf_counter() - start


def _convolutional(models) -> list[torch.nn.Module]:
    nets = [models.denoising_unet, models.reference_unet, models.vae, models.pose_guider, models.keypoint_extractor]
    return nets + ([models.taesd] if getattr(models, "taesd", None) is not None else [])


def _compiled(models) -> list[torch.nn.Module]:
    """The networks of the steady step (the reference UNet runs once per reference and per keyframe)."""
    nets = [models.denoising_unet, models.vae.decoder, models.keypoint_extractor, models.motion_encoder,
            models.pose_guider]
    return nets + ([models.taesd.decoder] if getattr(models, "taesd", None) is not None else [])


class StepGraph:
    """Replays `StreamEngine.steady_step` from CUDA graphs: the driving frames and the noise are copied into
    the graph's input buffers, every kernel of the step is launched at once, and the state (updated in
    place by the step) stays in the buffers the graph was captured on.

    A graph is captured per phase of the keyframe test (off before the 10th step and once the bank is
    known to be full, on in between), at the first step of that phase, after ``warmup`` eager runs on a side
    stream (which also compile, when the models are compiled). Those runs would advance the state, so it is
    copied before them and put back. A new reference (`StreamEngine.set_reference`) allocates new state
    buffers and calls :meth:`reset`.
    """

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self.graphs: dict[bool, tuple[torch.cuda.CUDAGraph, tuple]] = {}
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.capture_seconds = 0.0

    def reset(self) -> None:
        self.graphs.clear()
        self.inputs = None

    def run(self, engine, images: torch.Tensor, noise: torch.Tensor):
        phase = engine.keyframe_test_runs()
        if phase not in self.graphs:
            self._capture(engine, images, noise, phase)
        graph, outputs = self.graphs[phase]
        self.inputs[0].copy_(images, non_blocking=True)
        self.inputs[1].copy_(noise, non_blocking=True)
        graph.replay()
        return outputs

    def _capture(self, engine, images: torch.Tensor, noise: torch.Tensor, phase: bool) -> None:
        start = time.perf_counter()
        if self.inputs is None:
            self.inputs = (images.clone(), noise.clone())
        state = [t.clone() for t in engine.state_tensors()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                engine.steady_step(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        for t, saved in zip(engine.state_tensors(), state, strict=True):
            t.copy_(saved)
        graph = torch.cuda.CUDAGraph()
        pool = next(iter(self.graphs.values()))[0].pool() if self.graphs else None
        with torch.cuda.graph(graph, pool=pool):
            outputs = engine.steady_step(*self.inputs)
        self.graphs[phase] = (graph, outputs)
        torch.cuda.synchronize()
        self.capture_seconds += time.perf_counter() - start
