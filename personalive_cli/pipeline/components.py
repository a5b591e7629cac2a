"""All PersonaLive networks together: built from configs, loaded from / saved to the official layout.

``PersonaLiveModels.from_pretrained(dir)`` and ``save_pretrained(dir)`` are symmetric: a folder
written by ``save_pretrained`` (e.g. the tiny random-weight model the tests use) is read by the same
loader as the official release.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from personalive_cli.errors import UserError
from personalive_cli.io.outputs import staged_into
from personalive_cli.models.base_configs import CLIP_VIT_L14_VISION, SD_VAE_FT_MSE, TINY_CLIP_VISION, TINY_VAE
from personalive_cli.models.denoising_unet import DenoisingUNet, DenoisingUNetConfig
from personalive_cli.models.keypoint_extractor import KeypointExtractor, KeypointExtractorConfig
from personalive_cli.models.motion_encoder import MotionEncoder, MotionEncoderConfig
from personalive_cli.models.pose_guider import PoseGuider, PoseGuiderConfig
from personalive_cli.models.reference_unet import ReferenceUNet
from personalive_cli.weights import WeightsLayout, find_checkpoint, load_exact, resolve_weights

CONFIG_FILE = "config.json"


def _quiet_hub_progress() -> None:
    """transformers/diffusers draw tqdm bars while loading tiny local files; our progress is rich."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # in personalive/: our addition, describes non-default architectures


def _from_dict(cls, data: dict):
    """Rebuild a (frozen) config dataclass from JSON data: lists back to tuples; unknown keys are errors
    (a misspelt field must not silently build the default architecture)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{CONFIG_FILE}: unknown {cls.__name__} keys: {', '.join(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass
class PersonaLiveConfig:
    """Architecture of every network. Defaults = the released model (SD-1.5-sized UNets)."""

    unet: DenoisingUNetConfig = field(default_factory=DenoisingUNetConfig)
    pose_guider: PoseGuiderConfig = field(default_factory=PoseGuiderConfig)
    motion_encoder: MotionEncoderConfig = field(default_factory=MotionEncoderConfig)
    keypoints: KeypointExtractorConfig = field(default_factory=KeypointExtractorConfig)
    vae: dict = field(default_factory=lambda: dict(SD_VAE_FT_MSE))
    clip: dict = field(default_factory=lambda: dict(CLIP_VIT_L14_VISION))

    @classmethod
    def tiny(cls) -> PersonaLiveConfig:
        """Same architecture and code paths, a few channels: what the tests run."""
        unet = DenoisingUNetConfig.tiny()
        return cls(unet=unet, pose_guider=PoseGuiderConfig.tiny(out_channels=unet.block_out_channels[0]),
                   motion_encoder=MotionEncoderConfig.tiny(), keypoints=KeypointExtractorConfig.tiny(),
                   vae=dict(TINY_VAE), clip=dict(TINY_CLIP_VISION))

    def to_dict(self) -> dict:
        return {"unet": dataclasses.asdict(self.unet), "pose_guider": dataclasses.asdict(self.pose_guider),
                "motion_encoder": dataclasses.asdict(self.motion_encoder),
                "keypoints": dataclasses.asdict(self.keypoints)}

    @classmethod
    def from_dict(cls, data: dict) -> PersonaLiveConfig:
        unknown = sorted(set(data) - {"unet", "pose_guider", "motion_encoder", "keypoints"})
        if unknown:
            raise UserError(f"{CONFIG_FILE}: unknown sections: {', '.join(unknown)}")
        return cls(unet=_from_dict(DenoisingUNetConfig, data.get("unet", {})),
                   pose_guider=_from_dict(PoseGuiderConfig, data.get("pose_guider", {})),
                   motion_encoder=_from_dict(MotionEncoderConfig, data.get("motion_encoder", {})),
                   keypoints=_from_dict(KeypointExtractorConfig, data.get("keypoints", {})))

    @classmethod
    def for_layout(cls, layout: WeightsLayout) -> PersonaLiveConfig:
        """Our config.json if the folder has one, else the release's architecture with the SD UNet config."""
        ours = layout.personalive / CONFIG_FILE
        if ours.is_file():
            return cls.from_dict(json.loads(ours.read_text()))
        try:
            unet = DenoisingUNetConfig.from_sd_unet_config(layout.unet_config)
        except ValueError as exc:
            raise UserError(f"{layout.unet_config}: {exc}") from None
        return cls(unet=unet)


class PersonaLiveModels(nn.Module):
    """vae, image_encoder, reference_unet, denoising_unet, pose_guider, motion_encoder, keypoint_extractor
    (and an optional tiny VAE decoder, ``taesd``)."""

    def __init__(self, config: PersonaLiveConfig):
        super().__init__()
        from diffusers import AutoencoderKL
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        self.config = config
        self.vae = AutoencoderKL.from_config(config.vae)
        self.image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**config.clip))
        self.reference_unet = ReferenceUNet(config.unet)
        self.denoising_unet = DenoisingUNet(config.unet)
        self.pose_guider = PoseGuider(config.pose_guider)
        self.motion_encoder = MotionEncoder(config.motion_encoder)
        self.keypoint_extractor = KeypointExtractor(config.keypoints)
        self.taesd = None
        self.eval().requires_grad_(False)

    # The official file each of our networks is read from (the denoising UNet: two files, the second wins).
    FILES = {
        "denoising_unet": ("denoising_unet", "temporal_module"),
        "reference_unet": ("reference_unet",),
        "pose_guider": ("pose_guider",),
        "motion_encoder": ("motion_encoder",),
        "keypoint_extractor": ("motion_extractor",),
    }

    @classmethod
    def random(cls, config: PersonaLiveConfig | None = None, seed: int = 0) -> PersonaLiveModels:
        """Seeded random weights (for tests and for speed measurements, which do not depend on values)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config or PersonaLiveConfig())

    @classmethod
    def from_pretrained(cls, weights: str | Path | WeightsLayout | None, tiny_vae: bool = False) -> PersonaLiveModels:
        """Load every network from a weights folder in the official layout (see ``personalive_cli.weights``)."""
        from diffusers import AutoencoderKL
        from transformers import CLIPVisionModelWithProjection

        layout = weights if isinstance(weights, WeightsLayout) else resolve_weights(weights)
        _quiet_hub_progress()
        config = PersonaLiveConfig.for_layout(layout)
        with torch.device("meta"):
            models = cls(config)
        for attr, stems in cls.FILES.items():
            module = getattr(models, attr)
            files = [layout.checkpoint(stem) for stem in stems]
            # pos_encoder.pe: deterministic tables the release may or may not carry.
            optional = [k for k in module.state_dict() if k.endswith("pos_encoder.pe")]
            load_exact(module, files, optional=optional, ignorable=["idx_tensor"])
            _materialize_buffers(module)
        try:
            models.vae = AutoencoderKL.from_pretrained(layout.vae)
            models.image_encoder = CLIPVisionModelWithProjection.from_pretrained(layout.image_encoder)
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"cannot load base model ({str(exc).splitlines()[0]})") from None
        if tiny_vae:
            if layout.taesd is None:
                raise UserError("--vae tiny needs the taesd folder (madebyollin/taesd) inside the weights folder: "
                                "run `personalive weights download DIR --taesd`")
            from diffusers import AutoencoderTiny

            models.taesd = AutoencoderTiny.from_pretrained(layout.taesd)
        config.vae, config.clip = dict(models.vae.config), models.image_encoder.config.to_dict()
        return models.eval().requires_grad_(False)

    def save_pretrained(self, root: str | Path) -> WeightsLayout:
        """Write the official layout (plus ``personalive/config.json`` describing this architecture).

        Everything is written into a temporary folder beside ``root`` first and moved into place
        component by component, so an interrupted save never leaves truncated checkpoints behind."""
        _quiet_hub_progress()
        with staged_into(root) as staging:
            layout = WeightsLayout.from_root(staging)
            layout.personalive.mkdir(parents=True)
            unet_state = self.denoising_unet.state_dict()
            temporal = {k: v for k, v in unet_state.items() if ".temporal_modules." in k}
            spatial = {k: v for k, v in unet_state.items() if ".temporal_modules." not in k}
            files = {"denoising_unet": spatial, "temporal_module": temporal,
                     "reference_unet": self.reference_unet.state_dict(), "pose_guider": self.pose_guider.state_dict(),
                     "motion_encoder": self.motion_encoder.state_dict(),
                     "motion_extractor": self.keypoint_extractor.state_dict()}
            for stem, state in files.items():
                torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()},
                           layout.personalive / f"{stem}.pth")
            (layout.personalive / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
            layout.unet_config.parent.mkdir(parents=True)
            layout.unet_config.write_text(json.dumps(_sd_unet_dict(self.config.unet), indent=2))
            self.image_encoder.save_pretrained(layout.image_encoder)
            self.vae.save_pretrained(layout.vae)
            if self.taesd is not None:
                self.taesd.save_pretrained(staging / "taesd")
        return WeightsLayout.from_root(root)


def _sd_unet_dict(cfg: DenoisingUNetConfig) -> dict:
    """The SD ``unet/config.json`` fields this architecture corresponds to (for a complete layout)."""
    return {"_class_name": "UNet2DConditionModel", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "block_out_channels": list(cfg.block_out_channels), "down_block_types": list(cfg.down_block_types),
            "up_block_types": list(cfg.up_block_types), "layers_per_block": cfg.layers_per_block,
            "attention_head_dim": cfg.attention_heads, "cross_attention_dim": cfg.cross_attention_dim,
            "norm_num_groups": cfg.norm_num_groups, "norm_eps": cfg.norm_eps, "flip_sin_to_cos": cfg.flip_sin_to_cos,
            "freq_shift": cfg.freq_shift, "downsample_padding": cfg.downsample_padding}


def _materialize_buffers(module: nn.Module) -> None:
    """Buffers that stayed on the meta device (deterministic tables not in the file) are rebuilt."""
    for sub in module.modules():
        reset = getattr(sub, "reset_table", None)
        if reset is not None and any(b.is_meta for b in sub.buffers(recurse=False)):
            reset()
    leftover = [n for n, t in module.state_dict().items() if t.is_meta]
    if leftover:
        raise UserError(f"weights do not cover {type(module).__name__}: {', '.join(leftover[:3])}")


def check_layout(root: str | Path) -> list[dict]:
    """Per file: present, readable, keys and shapes as the model expects (``personalive weights check``)."""
    from personalive_cli.weights import PERSONALIVE_FILES, compare_keys, read_state_dict

    layout = WeightsLayout.from_root(root)
    rows = []
    try:
        config = PersonaLiveConfig.for_layout(layout)
    except (UserError, OSError, json.JSONDecodeError) as exc:
        config = PersonaLiveConfig()
        rows.append({"file": str(layout.unet_config), "status": "missing" if not layout.unet_config.is_file() else "bad",
                     "detail": str(exc) if not isinstance(exc, OSError) else "not found"})
    with torch.device("meta"):
        models = PersonaLiveModels(config)
    expected_by_stem = {}
    for attr, stems in PersonaLiveModels.FILES.items():
        state = {k: v.shape for k, v in getattr(models, attr).state_dict().items()}
        if attr == "denoising_unet":
            expected_by_stem["denoising_unet"] = {k: s for k, s in state.items() if ".temporal_modules." not in k}
            expected_by_stem["temporal_module"] = {k: s for k, s in state.items() if ".temporal_modules." in k}
        else:
            expected_by_stem[stems[0]] = state
    for stem in PERSONALIVE_FILES:
        path = find_checkpoint(layout.personalive, stem)
        if path is None:
            rows.append({"file": str(layout.personalive / f"{stem}.pth"), "status": "missing", "detail": "not found"})
            continue
        try:
            state = read_state_dict(path)
        except UserError as exc:
            rows.append({"file": str(path), "status": "bad", "detail": str(exc)})
            continue
        expected = expected_by_stem[stem]
        optional = [k for k in expected if k.endswith("pos_encoder.pe")]
        _, problems = compare_keys(expected, [(path, state)], optional=optional, ignorable=["idx_tensor"])
        rows.append({"file": str(path), "status": "ok" if not problems else "mismatch",
                     "detail": f"{len(state)} keys match" if not problems else "; ".join(p.split(": ", 1)[-1] for p in problems)})
    for folder, weight_names in ((layout.image_encoder, ("model.safetensors", "pytorch_model.bin")),
                                 (layout.vae, ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"))):
        cfg_ok = (folder / "config.json").is_file()
        weights = [n for n in weight_names if (folder / n).is_file()]
        status = "ok" if cfg_ok and weights else "missing"
        detail = ", ".join(weights) if status == "ok" else ("no config.json" if not cfg_ok else "no weights file")
        rows.append({"file": str(folder), "status": status, "detail": detail})
    if layout.unet_config.is_file() and not any(r["file"] == str(layout.unet_config) for r in rows):
        rows.append({"file": str(layout.unet_config), "status": "ok", "detail": "SD UNet config"})
    rows.append({"file": str(Path(root) / "taesd"), "status": "ok" if layout.taesd else "optional",
                 "detail": "tiny VAE decoder for --vae tiny" if layout.taesd else "absent (only for --vae tiny)"})
    return rows
