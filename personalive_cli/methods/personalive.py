"""``personalive``: the PersonaLive model behind the Method interface (the streaming engine)."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from personalive_cli.errors import UserError
from personalive_cli.registry import Method, MethodStatus, Session, as_frames, option

HISTORY = 13  # the official end padding mirrors the 12 driving frames before the last one


class PersonaLiveSession(Session):
    """Feeds the engine 4 frames at a time. Warm-up chunks are not emitted, so output i is the
    animation of driving frame i; :meth:`flush` pushes mirrored look-ahead frames (as the official
    offline pipeline pads the end of a video) until every driving frame has its output."""

    def __init__(self, engine, size: int | None = None):
        super().__init__(frames_per_step=4, size=size)
        self.engine = engine
        self.history: deque[np.ndarray] = deque(maxlen=HISTORY)
        self.received = 0
        self.emitted = 0

    def push(self, frames) -> list[np.ndarray]:
        frames = as_frames(frames, self.size)
        self.history.extend(frames)
        self.received += len(frames)
        return super().push(frames)

    def step(self, frames: np.ndarray) -> Iterator[np.ndarray]:
        out = self.engine.step(frames, decode_warmup=False)
        if out.warmup:
            return
        for frame in out.frames[: self.received - self.emitted]:
            self.emitted += 1
            yield frame

    def flush(self) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        if not self.history:
            return out
        history = list(self.history)
        # Look-ahead after the last frame: the frames before it, newest first (then the oldest kept one).
        mirror = history[-2::-1] or history[-1:]
        pad = itertools.chain(mirror, itertools.repeat(mirror[-1]))
        while self.emitted < self.received:
            self._pending.extend(itertools.islice(pad, self.frames_per_step - len(self._pending)))
            step = np.stack(self._pending)
            self._pending = []
            out.extend(self.step(step))
        return out


@dataclass
class PersonaLiveOptions:
    """Engine settings; each fix of an official-code behaviour is one of them (docs/personalive.md)."""

    keyframes: bool = option(True, "Historical Keyframe Mechanism on/off")
    keyframe_threshold: float = option(17.0, "motion distance above which a chunk becomes a historical keyframe")
    max_keyframes: int = option(3, "historical keyframes kept at most")
    reset_keyframe_flag: bool = option(True, "reset the keyframe flag once the bank is full (false: the official "
                                             "offline stream, whose attention grows without bound)")
    keyframe_compare: str = option("emitted", "emitted (official online) or newest (official offline stream): "
                                              "which chunk's motion a keyframe candidate is compared by")
    bounded_motion_bank: bool = option(True, "stop growing the motion bank once no keyframe can be added "
                                             "(false: the official online behaviour)")
    fp16_banks: bool = option(True, "round reference/keyframe attention tokens to fp16, as the official code "
                                    "stores them (false: full precision in fp32 runs)")
    temporal_attention: str = option("bidirectional", "bidirectional (PersonaLive) or chunk_causal: for weights "
                                                      "trained with the chunk-causal ablation (train stage3 --set "
                                                      "temporal_attention=chunk_causal)")
    static_shapes: str = option("auto", "the fixed-shape stream step without host syncs (masked keyframe bank): "
                                        "true, false, or auto (on with --cuda-graphs)")
    fuse_qkv: bool = option(False, "one matrix product for Q, K and V of every spatial self-attention")
    channels_last: bool = option(False, "NHWC memory layout for the convolutions")
    compile_mode: str = option("default", "torch.compile mode with --compile (e.g. max-autotune-no-cudagraphs)")


class PersonaLive(Method):
    frames_per_step = 4
    Options = PersonaLiveOptions
    model_flags = frozenset({"vae", "attention", "compile", "cuda_graphs"})
    can_use_random_weights = True
    has_weights = True
    downloads_to_cache = True
    download_extras = ("taesd",)  # the tiny VAE decoder of --vae tiny
    weights_env = "PERSONALIVE_WEIGHTS"
    description = "PersonaLive (CVPR 2026): 4-step streaming diffusion with hybrid motion control and keyframes"

    def __init__(self, weights=None, device="cpu", dtype=None, size=512, seed=42, random_weights: bool = False,
                 vae: str = "full", attention: str = "sdpa", engine_options=None, keyframes: bool = True,
                 keyframe_threshold: float = 17.0, max_keyframes: int = 3, reset_keyframe_flag: bool = True,
                 keyframe_compare: str = "emitted", bounded_motion_bank: bool = True, fp16_banks: bool = True,
                 temporal_attention: str = "bidirectional", static_shapes: str = "auto", fuse_qkv: bool = False,
                 channels_last: bool = False, compile_mode: str = "default", compile: bool = False,
                 cuda_graphs: bool = False, **options):
        super().__init__(weights=weights, device=device, dtype=dtype, size=size, seed=seed, **options)
        from personalive_cli.pipeline.acceleration import SpeedOptions, accelerate_models
        from personalive_cli.pipeline.components import PersonaLiveConfig, PersonaLiveModels
        from personalive_cli.pipeline.engine import EngineOptions

        if cuda_graphs and torch.device(device).type != "cuda":
            raise UserError("--cuda-graphs needs a CUDA device")
        if cuda_graphs and attention != "sdpa":
            raise UserError("--cuda-graphs needs --attention sdpa (the masked keyframe bank of the static step)")
        static = {"true": True, "false": False, "auto": cuda_graphs}.get(str(static_shapes).lower())
        if static is None:
            raise UserError(f"static_shapes must be true, false or auto, got {static_shapes!r}")
        if cuda_graphs and not static:
            raise UserError("--cuda-graphs needs the static-shape step (static_shapes=true or auto)")
        if static and not (reset_keyframe_flag and bounded_motion_bank):
            raise UserError("static_shapes needs reset_keyframe_flag=true and bounded_motion_bank=true (the "
                            "official behaviours grow without bound)")
        if vae not in ("full", "tiny"):
            raise UserError(f"unknown --vae {vae!r}; choose full or tiny")
        if temporal_attention not in ("bidirectional", "chunk_causal"):
            raise UserError(f"unknown temporal_attention {temporal_attention!r}; choose bidirectional or chunk_causal")
        if attention == "xformers" and torch.device(device).type != "cuda":
            raise UserError("--attention xformers needs a CUDA device; on this device use --attention sdpa")
        self.dtype = dtype or torch.float32
        if random_weights:
            models = PersonaLiveModels.random(PersonaLiveConfig(), seed=seed or 0)
            if vae == "tiny":
                from diffusers import AutoencoderTiny

                models.taesd = AutoencoderTiny()
        else:
            models = PersonaLiveModels.from_pretrained(weights, tiny_vae=vae == "tiny")
        try:
            models.denoising_unet.set_attention_backend(attention)
            models.reference_unet.set_attention_backend(attention)
            if temporal_attention != "bidirectional":
                models.denoising_unet.set_temporal_attention(temporal_attention)
        except (RuntimeError, ValueError) as exc:
            raise UserError(str(exc)) from None
        self.models = models.to(device=device, dtype=self.dtype)
        self.speed = SpeedOptions(compile=compile, compile_mode=compile_mode, cuda_graphs=cuda_graphs,
                                  fuse_qkv=fuse_qkv, channels_last=channels_last)
        accelerate_models(self.models, self.speed, torch.device(device))
        # Each official-code fix is a named option (see docs/personalive.md); `--option NAME=VALUE` sets it.
        if keyframe_compare not in ("emitted", "newest"):
            raise UserError(f"keyframe_compare must be 'emitted' or 'newest', got {keyframe_compare!r}")
        self.engine_options = engine_options or EngineOptions(
            keyframes=keyframes, keyframe_threshold=keyframe_threshold, max_keyframes=max_keyframes,
            reset_keyframe_flag=reset_keyframe_flag, keyframe_compare=keyframe_compare,
            bounded_motion_bank=bounded_motion_bank, fp16_banks=fp16_banks, tiny_vae=vae == "tiny",
            static_shapes=static)

    @classmethod
    def status(cls, weights=None) -> MethodStatus:
        from personalive_cli.weights import resolve_weights

        try:
            resolve_weights(weights)
        except UserError as exc:
            return MethodStatus(ready=False, detail=str(exc).split(";")[0],
                                needs=["personalive weights download DIR", "then --weights DIR or PERSONALIVE_WEIGHTS=DIR"])
        return MethodStatus(ready=True, detail="weights found")

    @classmethod
    def download_weights(cls, root=None, extras=()) -> None:
        from personalive_cli.weights import download

        download(root, include_taesd="taesd" in extras)

    @classmethod
    def check_weights(cls, root) -> list[dict]:
        from personalive_cli.pipeline.components import check_layout

        return check_layout(root)

    @classmethod
    def make_tiny_weights(cls, root, seed: int = 0) -> None:
        from personalive_cli.pipeline.components import PersonaLiveConfig, PersonaLiveModels

        if (Path(root) / "personalive").exists():
            raise UserError(f"{root} already holds PersonaLive weights; make-tiny writes only into a new folder")
        PersonaLiveModels.random(PersonaLiveConfig.tiny(), seed=seed).save_pretrained(root)

    def start(self, reference: np.ndarray) -> Session:
        from personalive_cli.pipeline.acceleration import StepGraph
        from personalive_cli.pipeline.engine import StreamEngine

        engine = StreamEngine(self.models, size=self.size, device=self.device, dtype=self.dtype,
                              seed=42 if self.seed is None else self.seed, options=self.engine_options)
        if self.speed.cuda_graphs:
            engine.graph = StepGraph()
        engine.set_reference(reference)
        return PersonaLiveSession(engine, self.size)
