"""``liveportrait``: the native LivePortrait (human model) behind the Method interface, one frame per step.

Per reference (``start``): crop the source (LivePortrait's own cropper when its ONNX models are in the
weights folder, else the project's offline face detector, said on stderr), then motion extractor and
appearance extractor on the 256 x 256 crop. Per driving frame (``step``): motion extractor on the
frame resized to 256, motion relative to the first driving frame, stitching, warping, SPADE decoding
to 512 x 512, and paste-back into the reference frame (when cropping and stitching are on, as the
release does), else the crop resized to ``size``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from baselines.liveportrait import cropper as crops
from baselines.liveportrait.models import (
    ENV_VAR,
    LivePortraitConfig,
    LivePortraitLayout,
    LivePortraitModels,
    check_layout,
    download,
    resolve_weights,
)
from baselines.liveportrait.motion import REGIONS, Motion, compose
from personalive_cli.errors import UserError
from personalive_cli.registry import Method, MethodStatus, Session, option

log = logging.getLogger(__name__)

INPUT_SIZE = 256
LIP_NORMALIZE_THRESHOLD = 0.03


def _to_input(rgb: np.ndarray, interpolation: str, device, dtype) -> torch.Tensor:
    """uint8 (h, w, 3) -> (1, 3, 256, 256) in [0, 1] (INTER_AREA for the source crop, bilinear for driving)."""
    cv2 = crops.load_cv2()
    flag = cv2.INTER_AREA if interpolation == "area" else cv2.INTER_LINEAR
    if rgb.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
        rgb = cv2.resize(np.ascontiguousarray(rgb), (INPUT_SIZE, INPUT_SIZE), interpolation=flag)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    return x.clamp(0, 1).to(device=device, dtype=dtype)


class LivePortraitSession(Session):
    def __init__(self, method: LivePortrait, reference: np.ndarray) -> None:
        super().__init__(frames_per_step=1, size=method.size)
        self.method = m = method
        self.models = m.models
        self.reference = np.ascontiguousarray(reference)
        self.crop = m._crop_source(self.reference)
        with torch.inference_mode():
            source = _to_input(self.crop.crop, "area", m.device, torch.float32)
            with m.autocast():
                info = self.models.motion_extractor(source, with_exp=True)
                self.feature = self.models.appearance_feature_extractor(source).float()
            self.source = Motion.from_info(info)
            self.x_s = self.source.keypoints()
        self.first: Motion | None = None
        self.lip_delta = None
        ratios = crops.eye_lip_ratios(self.crop.landmarks203) if self.crop.landmarks203 is not None else None
        self.source_ratios = ratios
        if m.normalize_lip and ratios is not None and ratios[2] >= LIP_NORMALIZE_THRESHOLD:
            with torch.inference_mode():
                lip = torch.tensor([[ratios[2], 0.0]], dtype=torch.float32, device=m.device)
                self.lip_delta = self.models.stitching_retargeting_module.retarget_lip(self.x_s, lip)
        self.pasteback = m.pasteback and m.stitching and self.crop.backend != "none"
        if self.pasteback:
            h, w = self.reference.shape[:2]
            template = np.round(crops.mask_template() * 255).astype(np.uint8)  # warped as the release's PNG
            self.mask = (crops.warp(template, self.crop.crop_to_orig, w, h).astype(np.float32) / 255)[..., None]
        if m.eye_retargeting or m.lip_retargeting:
            m._landmark_cropper().reset()

    def step(self, frames: np.ndarray) -> Iterator[np.ndarray]:
        for frame in frames:
            yield self.animate(frame)

    @torch.inference_mode()
    def animate(self, frame: np.ndarray) -> np.ndarray:
        m, models = self.method, self.models
        with m.autocast():
            info = models.motion_extractor(_to_input(frame, "bilinear", m.device, torch.float32), with_exp=True)
        driving = Motion.from_info(info)
        if self.first is None:
            self.first = driving
        x_d = compose(self.source, driving, self.first, relative=m.relative_motion, region=m.animation_region
                      ).keypoints()
        sr = models.stitching_retargeting_module
        if m.eye_retargeting or m.lip_retargeting:
            x_d = self._retarget(frame, x_d)
        if m.stitching:
            x_d = sr.stitch(self.x_s, x_d)
        if self.lip_delta is not None and not (m.eye_retargeting or m.lip_retargeting):
            x_d = x_d + self.lip_delta
        x_d = self.x_s + (x_d - self.x_s) * m.driving_multiplier
        with m.autocast():
            feature, _, _ = models.warping_module(self.feature, self.x_s, x_d)
            image = models.spade_generator(feature)[0].float().clamp(0, 1)
        crop = (image.permute(1, 2, 0) * 255).to(torch.uint8).cpu().numpy()  # truncation, as the release
        if self.pasteback:
            h, w = self.reference.shape[:2]
            pasted = crops.warp(crop, self.crop.crop_to_orig, w, h).astype(np.float32)
            out = self.mask * pasted + (1 - self.mask) * self.reference.astype(np.float32)
            out = np.clip(out, 0, 255).astype(np.uint8)
            if out.shape[:2] != (m.size, m.size) and self.reference.shape[0] == self.reference.shape[1]:
                out = _resize(out, m.size)
            return out
        return _resize(crop, m.size)

    def _retarget(self, frame: np.ndarray, x_d: torch.Tensor) -> torch.Tensor:
        """Relative-mode eye / lip retargeting: the driving keypoints become x_s + the retargeting deltas."""
        m, sr = self.method, self.models.stitching_retargeting_module
        lmk = m._landmark_cropper().track(frame)
        if lmk is None or self.source_ratios is None:
            return x_d
        left, right, lip_s = self.source_ratios
        d_left, _, d_lip = crops.eye_lip_ratios(lmk)
        out = self.x_s.clone() if m.relative_motion else x_d
        if m.eye_retargeting:
            eye = torch.tensor([[left, right, d_left]], dtype=torch.float32, device=x_d.device)
            out = out + sr.retarget_eye(self.x_s, eye)
        if m.lip_retargeting:
            lip = torch.tensor([[lip_s, d_lip]], dtype=torch.float32, device=x_d.device)
            out = out + sr.retarget_lip(self.x_s, lip)
        return out


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    cv2 = crops.load_cv2()
    flag = cv2.INTER_AREA if size < image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=flag)


@dataclass
class LivePortraitOptions:
    """The release's inference switches (its ``InferenceConfig``), with its defaults."""

    crop: str = option("auto", "auto: crop the reference around its face; none: use it whole")
    pasteback: bool = option(True, "paste the animated face crop back into the whole reference")
    stitching: bool = option(True, "stitching network: keeps the shoulders still under head motion")
    relative_motion: bool = option(True, "drive with motion relative to the first driving frame")
    normalize_lip: bool = option(False, "close the reference's lips first (needs the landmark models)")
    eye_retargeting: bool = option(False, "eye-openness retargeting (needs the landmark models)")
    lip_retargeting: bool = option(False, "lip-openness retargeting (needs the landmark models)")
    driving_multiplier: float = option(1.0, "scale of the driving expression")
    animation_region: str = option("all", f"which motion to transfer: {', '.join(REGIONS)}")


class LivePortrait(Method):
    frames_per_step = 1
    Options = LivePortraitOptions
    can_use_random_weights = True
    has_weights = True
    downloads_to_cache = True
    weights_env = ENV_VAR
    description = ("LivePortrait (human): implicit-keypoint warping GAN, native port of the official weights; "
                   "one frame in, one out")

    def __init__(self, weights=None, device="cpu", dtype=None, size=512, seed=42, random_weights: bool = False,
                 config: LivePortraitConfig | str | None = None, crop: str = "auto", pasteback: bool = True,
                 stitching: bool = True, relative_motion: bool = True, normalize_lip: bool = False,
                 eye_retargeting: bool = False, lip_retargeting: bool = False, driving_multiplier: float = 1.0,
                 animation_region: str = "all", **options):
        super().__init__(weights=weights, device=device, dtype=dtype, size=size, seed=seed, **options)
        if crop not in ("auto", "none"):
            raise UserError(f"unknown liveportrait crop mode {crop!r}; choose auto or none")
        if animation_region not in REGIONS:
            raise UserError(f"unknown animation region {animation_region!r}; choose one of {', '.join(REGIONS)}")
        # Weights stay fp32; on CUDA a half dtype runs the networks under autocast (as the release does),
        # while keypoint algebra and the stitching / retargeting MLPs stay fp32. Elsewhere: fp32.
        self.dtype = dtype or torch.float32
        self._autocast = torch.device(device).type == "cuda" and self.dtype in (torch.float16, torch.bfloat16)
        self.crop_mode, self.pasteback, self.stitching = crop, pasteback, stitching
        self.relative_motion, self.normalize_lip = relative_motion, normalize_lip
        self.eye_retargeting, self.lip_retargeting = eye_retargeting, lip_retargeting
        self.driving_multiplier, self.animation_region = float(driving_multiplier), animation_region
        self.layout: LivePortraitLayout | None = None
        if random_weights:
            cfg = LivePortraitConfig.tiny() if config == "tiny" else (config or LivePortraitConfig())
            models = LivePortraitModels.random(cfg, seed=seed or 0)
        else:
            self.layout = resolve_weights(weights)
            models = LivePortraitModels.from_pretrained(self.layout)
        self.models = models.to(device=device).eval()
        self._cropper: crops.LivePortraitCropper | None = None
        self.crop_backend = "none" if crop == "none" else (
            "liveportrait" if self.layout is not None and self.layout.has_crop_models() else "offline-detector")
        if (eye_retargeting or lip_retargeting or normalize_lip) and self.crop_backend != "liveportrait":
            raise UserError("eye/lip retargeting and lip normalisation need LivePortrait's landmark models "
                            "(insightface/ and liveportrait/landmark.onnx in the weights folder)")
        self._announced = False

    def autocast(self):
        return torch.autocast("cuda", dtype=self.dtype) if self._autocast else contextlib.nullcontext()

    @classmethod
    def status(cls, weights=None) -> MethodStatus:
        try:
            layout = resolve_weights(weights)
        except UserError as exc:
            return MethodStatus(ready=False, detail=str(exc).split(";")[0],
                                needs=["personalive weights download --method liveportrait [DIR]",
                                       "then --weights DIR or LIVEPORTRAIT_WEIGHTS=DIR"])
        crop = ("LivePortrait's cropper" if layout.has_crop_models()
                else "offline face detector (insightface/landmark ONNX absent)")
        return MethodStatus(ready=True, detail=f"weights found; cropping: {crop}")

    @classmethod
    def check_weights(cls, root) -> list[dict]:
        return check_layout(root)

    @classmethod
    def download_weights(cls, root=None, extras=()) -> None:
        download(root)

    @classmethod
    def make_tiny_weights(cls, root, seed: int = 0) -> None:
        LivePortraitModels.random(LivePortraitConfig.tiny(), seed=seed).save_pretrained(root)

    def _landmark_cropper(self) -> crops.LivePortraitCropper:
        if self._cropper is None:
            lay = self.layout
            self._cropper = crops.LivePortraitCropper(lay.detector_onnx, lay.landmark106_onnx, lay.landmark_onnx)
        return self._cropper

    def _crop_source(self, reference: np.ndarray) -> crops.SourceCrop:
        if self.crop_backend == "none":
            return crops.whole_image(reference)
        if self.crop_backend == "liveportrait":
            found = self._landmark_cropper().crop_source(reference)
        else:
            if not self._announced:
                where = f" under {self.layout.root}" if self.layout is not None else ""
                log.warning("liveportrait: LivePortrait's face cropper models (insightface det_10g.onnx, "
                            "2d106det.onnx, landmark.onnx) were not found%s; cropping the reference with the "
                            "project's offline face detector (mediapipe) instead: an axis-aligned approximation "
                            "of the official crop", where)
                self._announced = True
            found = crops.crop_source_offline(reference)
        if found is None:
            log.warning("liveportrait: no face found in the reference; animating the whole image (no crop, "
                        "no paste-back)")
            return crops.whole_image(reference)
        return found

    def start(self, reference: np.ndarray) -> Session:
        return LivePortraitSession(self, reference)
