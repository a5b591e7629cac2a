"""``StreamEngine``: PersonaLive's micro-chunk streaming schedule. The only place that knows it.

The window holds 4 chunks of 4 frames at noise levels t = 0 / 333 / 666 / 999 (oldest first). Each
:meth:`StreamEngine.step` consumes 4 driving frames and makes one denoising-UNet pass and one DDIM
step (length 333) for every chunk; the t = 0 chunk comes out clean and is decoded, the others move
one level down, and a new chunk (the reference latent noised to t = 999) enters with the new
driving frames' pose and motion. A driving chunk therefore leaves the window 3 steps after it
entered. The first step also fills the window with 12 "warm-up" frames whose pose and motion are
interpolated from the reference to the first driving frame.

Historical Keyframe Mechanism: the motion tokens of the frame being emitted are compared (L2 on
the flattened 512-d tokens) with a bank of earlier motions; past a threshold (17) that frame's clean
latent goes through the reference UNet and its attention tokens join the reference's as extra
keys/values of every later pass (at most 3 keyframes).

Departures from the official code, each an option whose default is the fixed behaviour:

* ``reset_keyframe_flag`` — the official offline-stream pipeline never clears its keyframe flag
  once the bank is full, so every later window adds one more keyframe and attention grows without
  bound. Here the trigger is evaluated afresh every step.
* ``keyframe_compare`` — the offline-stream pipeline compares the newest chunk's first frame but
  stores the emitted frame's latent (12 frames apart). ``"emitted"`` (default, as the official
  online path) compares and stores the same frame; ``"newest"`` reproduces the offline behaviour.
* ``bounded_motion_bank`` — the official motion bank keeps growing after the last keyframe; here it
  stops at ``1 + max_keyframes`` entries (the comparisons it would make can no longer add anything).
* Noise comes from one seeded ``torch.Generator`` (or from tensors the caller passes), never from
  the unseeded global generator the official online path uses.
* Reference/keyframe key/value projections are computed once per reference or keyframe, not per
  frame per pass (exact; about 0.1 TFLOP per output frame at 512²).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from personalive_cli.models.keypoint_extractor import KeypointInfo
from personalive_cli.models.scheduler import StreamScheduler
from personalive_cli.pipeline.keyframes import KeyframeBank
from personalive_cli.pipeline.keypoints import (
    crop_faces,
    draw_keypoints,
    face_boxes,
    first_call_keypoints,
    transfer_keypoints,
)

CHUNK = 4                      # frames per chunk (the micro-chunk)
TIMESTEPS = (0, 333, 666, 999)  # window chunks, oldest (cleanest) first
KEYPOINT_SIZE = 256            # the keypoint extractor's input resolution
NoiseSource = Callable[[tuple[int, ...]], torch.Tensor]


def window_timesteps(device: torch.device | str | None = None) -> torch.Tensor:
    """The per-frame timesteps of a 16-frame window, (16,): [0 x 4, 333 x 4, 666 x 4, 999 x 4], oldest first."""
    return torch.tensor([t for t in TIMESTEPS for _ in range(CHUNK)], device=device)


def slide_window(scheduler: StreamScheduler, eps: torch.Tensor, window: torch.Tensor,
                 noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One denoising step of every chunk of a window: the schedule of streaming inference and of Stage III
    training alike (``personalive_cli.training.stage3`` rolls its sequences out through this function).

    window, eps: (b, c, 16, h, w) at `window_timesteps`. Returns (written, x0): ``x0`` (float32) is the
    prediction of every frame; ``written`` is the window after the step: chunk 1 is its x0 (clean; it leaves
    the window and is emitted), chunks 2-4 are one rung lower (at 0 / 333 / 666). Inference steps them
    deterministically along ε̂ (``noise`` None, DDIM η = 0); training re-noises their x0 with fresh ``noise``
    (b, c, 16, h, w) (training.md §7). ``timesteps``: `window_timesteps` already on the window's device
    (the stream step passes its own: building them from host data inside a captured CUDA graph is not allowed).
    """
    t = window_timesteps(window.device) if timesteps is None else timesteps
    x_prev, x0 = scheduler.step(eps, t, window, noise)
    return torch.cat([x0[:, :, :CHUNK], x_prev[:, :, CHUNK:]], dim=2), x0


@dataclass
class EngineOptions:
    keyframe_threshold: float = 17.0
    max_keyframes: int = 3
    keyframe_after_steps: int = 8          # the test runs once more than this many steps are done
    keyframes: bool = True                 # the Historical Keyframe Mechanism at all
    reset_keyframe_flag: bool = True       # fix of the official sticky flag (see module docstring)
    keyframe_compare: str = "emitted"      # "emitted" (fixed) or "newest" (official offline stream)
    bounded_motion_bank: bool = True       # fix of the official ever-growing bank
    fp16_banks: bool = True                # the official banks are stored in fp16 whatever the model dtype
    tiny_vae: bool = False                 # decode with TAESD (needs models.taesd)
    static_shapes: bool = False            # the fixed-shape step with no host sync (see StreamEngine)


@dataclass
class StepOutput:
    frames: np.ndarray | None  # (4, H, W, 3) uint8, the emitted chunk
    latents: torch.Tensor      # (1, 4, 4, h, w) its clean latents (x0 of the t = 0 chunk)
    warmup: bool             # True for the 3 chunks of interpolated warm-up frames
    keyframe_added: bool | None  # None in the static mode, which does not read the verdict back


class StreamEngine:
    """One reference portrait being animated, 4 driving frames per :meth:`step`.

    ``models``: a :class:`~personalive_cli.pipeline.components.PersonaLiveModels` on ``device`` in ``dtype``.
    ``noise``: where Gaussian noise comes from: a seeded generator by default (drawn on the CPU so a
    seed means the same noise on every device), or any callable ``shape -> tensor``.

    State between steps lives in tensors of fixed shape, updated in place: the 12 window frames still being
    denoised (``window``, their ``poses`` and ``motions``) and the `KeyframeBank`. With
    ``options.static_shapes`` a step after the first also never reads a value back from the device: the
    keyframe test and the keyframe's write are decided on the device, in the same step as the dynamic mode
    decides them (so both give the same frames); the price is one reference-UNet pass on the emitted
    latent in every step while the bank may have room (its K/V are written only when the test fired) and
    attention over the empty keyframe slots (masked). That step is what `StepGraph` captures.
    """

    def __init__(self, models, size: int = 512, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 42, noise: NoiseSource | None = None, options: EngineOptions | None = None):
        if size % 64:
            raise ValueError(f"size must be a multiple of 64, got {size}")
        self.models, self.size = models, size
        self.device, self.dtype = torch.device(device), dtype
        self.options = options or EngineOptions()
        if self.options.keyframe_compare not in ("emitted", "newest"):
            raise ValueError("keyframe_compare must be 'emitted' or 'newest'")
        if self.options.static_shapes and not (self.options.reset_keyframe_flag and self.options.bounded_motion_bank):
            raise ValueError("static shapes need bounded banks: the official sticky keyframe flag and unbounded "
                             "motion bank grow without limit (use reset_keyframe_flag and bounded_motion_bank)")
        self.scheduler = StreamScheduler()
        if noise is None:
            generator = torch.Generator().manual_seed(seed)
            noise = lambda shape: torch.randn(shape, generator=generator)  # noqa: E731
        self._noise = noise
        self._t_window = window_timesteps(self.device)
        self._image_processor = VaeImageProcessor(do_resize=False)  # [-1, 1] <-> [0, 1] conventions
        self.reference_ready = False
        self.graph = None  # a StepGraph replaying the steady step (CUDA graphs), set by the caller

    # ------------------------------------------------------------------------------------------------
    # reference

    @torch.no_grad()
    def set_reference(self, image: np.ndarray) -> None:
        """Encode the reference portrait, uint8 (h, w, 3): latent, CLIP embedding, attention banks,
        keypoints, and the 3 warm-up chunks of the window. Resets all streaming state."""
        with _eager():  # once per reference: not worth compiling
            self._set_reference(image)

    def _set_reference(self, image: np.ndarray) -> None:
        m, dev, dt = self.models, self.device, self.dtype
        pil = Image.fromarray(image).convert("RGB")
        ref = _to_tensor(np.asarray(pil.resize((self.size, self.size), Image.LANCZOS)), dev)  # (1,3,S,S) [-1,1]
        self.ref_image = ref.to(dt)
        self.ref_latent = m.vae.encode(self.ref_image).latent_dist.mean * m.vae.config.scaling_factor  # (1,4,h,w)
        self.clip = self._clip_embed(pil)  # (1,1,768)
        self.bank = KeyframeBank(self._bank_kv(self.ref_latent), self.options.max_keyframes,
                                 static=self.options.static_shapes)
        small = _to_tensor(np.asarray(pil.resize((KEYPOINT_SIZE, KEYPOINT_SIZE), Image.LANCZOS)), dev)
        self.ref_kps = m.keypoint_extractor(small.to(dt) * 0.5 + 0.5)
        self.first_kps: KeypointInfo | None = None
        # Window padding: the reference latent noised to 0 / 333 / 666, one noise draw (1,4,12,h,w).
        h = self.size // 8
        pad_t = self._t_window[: 3 * CHUNK]
        noise = self._draw((1, 4, 3 * CHUNK, h, h))
        self.window = self.scheduler.add_noise(self.ref_latent[:, :, None].expand(-1, -1, 3 * CHUNK, -1, -1),
                                               noise, pad_t).to(dt)  # (1,4,12,h,w)
        self.poses: torch.Tensor | None = None    # (1,C,12,h,w) after the first step
        self.motions: torch.Tensor | None = None  # (1,12,32,16)
        self.steps = 0
        self._last_trigger = False
        self._known_keyframes = 0   # the host's (possibly late) view of the bank's count, static mode
        self._count_copy: tuple[torch.Tensor, torch.cuda.Event] | None = None
        self.reference_ready = True
        if self.graph is not None:
            self.graph.reset()

    def _clip_embed(self, pil: Image.Image) -> torch.Tensor:
        from transformers import CLIPImageProcessor

        size = self.models.image_encoder.config.image_size
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        pixels = processor(images=pil.resize((size, size), Image.BICUBIC), return_tensors="pt").pixel_values
        embeds = self.models.image_encoder(pixels.to(self.device, self.dtype)).image_embeds
        return embeds[:, None]

    def _bank_kv(self, latent: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        banks = self.models.reference_unet(latent.to(self.dtype), self.clip.expand(latent.shape[0], -1, -1))
        if self.options.fp16_banks:
            banks = {k: v.half().to(self.dtype) for k, v in banks.items()}
        return self.models.denoising_unet.bank_kv(banks)

    def _draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        noise = self._noise(shape)
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise source gave {tuple(noise.shape)}, expected {shape}")
        return noise.to(self.device, self.dtype)

    # ------------------------------------------------------------------------------------------------
    # streaming

    @torch.no_grad()
    def step(self, frames: np.ndarray, decode_warmup: bool = True) -> StepOutput:
        """Consume 4 driving frames, uint8 (4, S, S, 3) face crops at the working size; emit 4 frames
        (``frames`` is None for a warm-up chunk when ``decode_warmup`` is False)."""
        if not self.reference_ready:
            raise RuntimeError("call set_reference() first")
        if frames.shape[0] != CHUNK:
            raise ValueError(f"a step takes {CHUNK} frames, got {frames.shape[0]}")
        h = self.size // 8
        noise = self._draw((1, 4, CHUNK, h, h))
        images = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.uint8)).to(self.device)
        warmup = self.steps < 3
        decode = decode_warmup or not warmup
        if self.steps == 0:
            # shapes seen once (16 warm-up frames): not worth compiling when the models are compiled
            with _eager():
                clean, pixels, trigger = self._first_step(images, noise, decode)
        elif self.graph is not None and decode:
            clean, pixels, trigger = self.graph.run(self, images, noise)
            clean = clean.clone()  # the graph's own buffer, overwritten by its next replay
        else:
            clean, pixels, trigger = self.steady_step(images, noise, decode)
        self.steps += 1
        self._note_keyframe_count()
        added = None if self.options.static_shapes else bool(trigger)
        frames_out = pixels.cpu().numpy() if pixels is not None else None
        return StepOutput(frames=frames_out, latents=clean, warmup=warmup, keyframe_added=added)

    def steady_step(self, images: torch.Tensor, noise: torch.Tensor, decode: bool = True):
        """Every step but the first: images uint8 (4, S', S', 3) on the device, noise (1, 4, 4, h, w) ->
        (clean latents (1, 4, 4, h, w), pixels uint8 (4, S, S, 3) on the device or None, keyframe verdict).
        The state is updated in place; in the static mode nothing here reads a value from the device."""
        pose, motion = self._encode_driving(self._normalise(images))
        return self._denoise(pose, motion, noise, decode)

    def _first_step(self, images: torch.Tensor, noise: torch.Tensor, decode: bool):
        """The first step: 12 warm-up frames interpolated from the reference to the first driving frame
        (keypoints and motion alike) join the window's conditions, then it is a steady step."""
        m, dt = self.models, self.dtype
        x = self._normalise(images)
        small = F.interpolate(x, size=(KEYPOINT_SIZE, KEYPOINT_SIZE), mode="bilinear", align_corners=False)
        drv = m.keypoint_extractor(small * 0.5 + 0.5)
        # Later steps take frame 1's pose from its own batch-1 run (as the official code does).
        self.first_kps = m.keypoint_extractor(small[:1] * 0.5 + 0.5)
        kps = first_call_keypoints(self.ref_kps, drv)          # 12 warm-up + 4 driving sets
        canvas = draw_keypoints(kps.float(), self.size).to(dt)  # (16,3,S,S) in [0,1]
        pose = m.pose_guider(canvas.permute(1, 0, 2, 3)[None])  # (1,C,16,h,w)
        faces = crop_faces(x, face_boxes(drv.posed().float(), self.size))
        ref_face = crop_faces(self.ref_image, face_boxes(self.ref_kps.posed().float(), self.size))
        tokens = m.motion_encoder(torch.cat([ref_face, faces]).transpose(0, 1)[None])  # (1,5,32,16)
        ref_motion, motion = tokens[:, :1], tokens[:, 1:]
        alpha = torch.linspace(0, 1, 3 * CHUNK + 1, device=self.device, dtype=dt)[:-1].view(1, -1, 1, 1)
        warm = ref_motion + alpha * (motion[:, :1] - ref_motion)  # (1,12,32,16)
        self.bank.start_motions(ref_motion.reshape(1, -1))
        self.poses, self.motions = pose[:, :, : 3 * CHUNK].contiguous(), warm.contiguous()
        return self._denoise(pose[:, :, 3 * CHUNK:], motion, noise, decode)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (4, S', S', 3) on the device -> (4, 3, S, S) in [-1, 1], the model's dtype."""
        x = VaeImageProcessor.normalize(images.permute(0, 3, 1, 2).float() / 255.0).to(self.dtype)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x

    def _encode_driving(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The front end of a steady step: driving frames (4, 3, S, S) in [-1, 1] -> pose features
        (1, C, 4, h, w) and motion tokens (1, 4, 32, 16)."""
        m, dt = self.models, self.dtype
        small = F.interpolate(images, size=(KEYPOINT_SIZE, KEYPOINT_SIZE), mode="bilinear", align_corners=False)
        drv = m.keypoint_extractor(small * 0.5 + 0.5)
        kps = transfer_keypoints(self.ref_kps, drv, self.first_kps)
        canvas = draw_keypoints(kps.float(), self.size).to(dt)      # (4,3,S,S) in [0,1]
        pose = m.pose_guider(canvas.permute(1, 0, 2, 3)[None])      # (1,C,4,h,w)
        faces = crop_faces(images, face_boxes(drv.posed().float(), self.size))
        return pose, m.motion_encoder(faces.transpose(0, 1)[None])

    def _denoise(self, pose: torch.Tensor, motion: torch.Tensor, noise: torch.Tensor, decode: bool):
        """Admit the new chunk (its conditions, and the reference latent noised to t = 999 with ``noise``),
        run one UNet pass over the 16-frame window and one DDIM step of every chunk, update the keyframes,
        and slide the window. Returns (clean chunk (1,4,4,h,w), pixels or None, keyframe verdict)."""
        m, dt = self.models, self.dtype
        fresh = self.scheduler.add_noise(self.ref_latent[:, :, None].expand(-1, -1, CHUNK, -1, -1), noise,
                                         self._t_window[-CHUNK:])
        x = torch.cat([self.window, fresh.to(dt)], dim=2)                # (1,4,16,h,w)
        poses = torch.cat([self.poses, pose.to(self.poses.dtype)], dim=2)
        motions = torch.cat([self.motions, motion.to(self.motions.dtype)], dim=1)  # (1,16,32,16)
        trigger = self._keyframe_test(motions)
        eps = m.denoising_unet(x, self._t_window, self.clip, motions, poses, self.bank.attention_kv())
        written, _ = slide_window(self.scheduler, eps, x, timesteps=self._t_window)
        written = written.to(dt)
        clean = written[:, :, :CHUNK]
        self._update_keyframes(trigger, clean)
        # slide: the emitted chunk leaves the window (in place, so a captured graph keeps its buffers)
        self.window.copy_(written[:, :, CHUNK:])
        self.poses.copy_(poses[:, :, CHUNK:])
        self.motions.copy_(motions[:, CHUNK:])
        return clean, (self._decode(clean) if decode else None), trigger

    def keyframe_test_runs(self) -> bool:
        """Whether this step runs the keyframe test. In the static mode the host learns that the bank is full
        one step late (or later) on CUDA, without waiting: until then the test runs and its verdict is
        masked on the device by the bank's room, so the frames are the same either way."""
        o = self.options
        if not o.keyframes or self.steps <= o.keyframe_after_steps:
            return False
        if not o.static_shapes:
            return True
        if self._count_copy is not None and self._count_copy[1].query():  # the last step's count has arrived
            self._known_keyframes = int(self._count_copy[0].min())  # a host tensor: no device involved
        return self._known_keyframes < o.max_keyframes  # (a batch of streams: while any has room)

    def _note_keyframe_count(self) -> None:
        """Static mode: the host's view of the bank's count, for `keyframe_test_runs`, between steps. On CUDA
        a copy is started and read when it has arrived; elsewhere reading it costs nothing."""
        if not self.options.static_shapes:
            return
        if self.device.type != "cuda":
            self._known_keyframes = int(self.bank.count.min())
            return
        if self._count_copy is None:
            self._count_copy = (torch.empty(self.bank.count.shape, dtype=torch.long, pin_memory=True),
                                torch.cuda.Event())
        host, event = self._count_copy
        host.copy_(self.bank.count, non_blocking=True)
        event.record()

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor the steps update in place (the window, its conditions, the keyframe bank)."""
        return [self.window, self.poses, self.motions, *self.bank.tensors()]

    def _keyframe_test(self, motion: torch.Tensor) -> torch.Tensor | bool:
        """Whether the window's motion calls for a keyframe (decided before the pass, on the motion it sees):
        a host bool, or in the static mode a (1,) bool tensor on the device."""
        o = self.options
        if not self.keyframe_test_runs():
            return False
        frame = 0 if o.keyframe_compare == "emitted" else 3 * CHUNK
        candidate = motion[:, frame].reshape(motion.shape[0], -1).float()
        if o.static_shapes:
            trigger = self.bank.has_room() & (self.bank.distance(candidate) > o.keyframe_threshold)
            self.bank.add_motion(candidate, trigger)
            return trigger
        if self.bank.num_keyframes >= o.max_keyframes:
            if not o.reset_keyframe_flag:
                return self._last_trigger  # official offline stream: the last verdict sticks forever
            if o.bounded_motion_bank:
                return False  # no keyframe can be added any more, so stop comparing (and growing the bank)
        trigger = self.bank.distance(candidate).item() > o.keyframe_threshold
        self.bank.add_motion(candidate, trigger)
        self._last_trigger = trigger
        return trigger

    def _update_keyframes(self, trigger: torch.Tensor | bool, clean: torch.Tensor) -> None:
        """Store the clean chunk's first frame as a historical keyframe (its attention K/V) when the
        motion test fired and the bank has room (or the official sticky flag is asked for)."""
        o = self.options
        if o.static_shapes:
            if isinstance(trigger, torch.Tensor):  # a test ran: the candidate's K/V, kept where it fired
                self.bank.add_keyframe(self._bank_kv(clean[:, :, 0]), trigger)
        elif trigger and (self.bank.num_keyframes < o.max_keyframes or not o.reset_keyframe_flag):
            self.bank.add_keyframe(self._bank_kv(clean[:, :, 0]), True)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(b,4,4,h,w) latents -> (b*4,S,S,3) uint8 on the device."""
        z = latents.transpose(1, 2).reshape(-1, *latents.shape[1:2], *latents.shape[3:])  # (b*4,4,h,w)
        if self.options.tiny_vae:
            images = self.models.taesd.decode(z).sample
        else:
            images = self.models.vae.decode(z / self.models.vae.config.scaling_factor).sample
        images = self._image_processor.postprocess(images.float(), output_type="pt")  # [0, 1], on the device
        # uint8 on the device (a quarter of the bytes to copy back); rounding, where the official writer truncates
        return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1)

    @property
    def num_keyframes(self) -> int:
        """Keyframes stored (reads the device's count in the static mode)."""
        return int(self.bank.count[0])


def _eager():
    """Run compiled modules eagerly inside (torch.compiler.set_stance, torch >= 2.6; else a no-op)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def _to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (h, w, 3) -> float32 (1, 3, h, w) in [-1, 1] (diffusers' VaeImageProcessor normalisation).

    The uint8 pixels go to the device first (a quarter of the bytes of floats); 2 * (x / 255) - 1 equals
    the official x / 127.5 - 1 bit for bit (scaling by 2 is exact).
    """
    t = torch.from_numpy(np.array(image, dtype=np.uint8)).to(device).permute(2, 0, 1)[None].float()
    return VaeImageProcessor.normalize(t / 255.0)
