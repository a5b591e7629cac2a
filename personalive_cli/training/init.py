"""Where a training run's networks start from (``--init DIR``).

Four kinds of folder are recognised, in this order:

0. **A training run** (``run.json``; a folder ``personalive train stage1|stage2`` wrote): its base weights with
   its newest checkpoint over them, as ``personalive train export`` would write them. Stage II starts from a
   Stage I run this way, Stage III from a Stage II run (and takes its discriminator too).

1. **The official layout** (``personalive/denoising_unet.pth`` present; the released PersonaLive weights,
   a folder ``personalive train export`` wrote, or ``personalive weights download DIR``): every network
   loads exactly, as for inference (`PersonaLiveModels.from_pretrained`).
2. **X-NeMo-style files** (the official training's starting point, [T]): ``xnemo_denoising_unet.pth``,
   ``xnemo_reference_unet.pth``, ``xnemo_motion_encoder.pth`` and ``pose_guider.pth`` (in DIR or
   ``DIR/xnemo/``; ``xnemo_temporal_module.pth`` optional), mapped onto our networks by key name. Keys our
   networks do not have are ignored (X-NeMo's reference UNet keeps SD's output head); every key of ours
   that training uses must be present with the right shape. X-NeMo's motion encoder takes extra inputs:
   only the first 512 input columns of ``final_proj.weight`` are kept, as the official code does.
3. **From scratch**: the SD image-variations UNet (``sd-image-variations-diffusers/unet/`` with its weights)
   initialises the 2-D part of both UNets; motion and temporal modules, the pose guider and the motion
   encoder are new (their output layers zero-initialised, so each starts as a no-op).

Cases 2 and 3 also need the frozen parts: ``sd-vae-ft-mse/``, ``sd-image-variations-diffusers/image_encoder/``
and LivePortrait's ``motion_extractor.pth`` (``personalive/``, ``liveportrait/base_models/`` or DIR itself).
The architecture is read from ``personalive/config.json`` when the folder has one (our tiny test builds),
else from the SD ``unet/config.json`` with the release's defaults for the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from personalive_cli.errors import UserError
from personalive_cli.training.run_folder import RunFolder
from personalive_cli.weights import WeightsLayout, compare_keys, find_checkpoint, read_state_dict

log = logging.getLogger(__name__)

XNEMO_FILES = ("xnemo_denoising_unet", "xnemo_reference_unet", "xnemo_motion_encoder", "pose_guider")
SD_UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
HOW_TO_GET = {
    "sd_unet": "download it with `huggingface-cli download lambdalabs/sd-image-variations-diffusers --include "
               "'unet/*' --local-dir DIR/sd-image-variations-diffusers`",
    "base": "`personalive weights download DIR` fetches the SD VAE and the CLIP image encoder",
    "motion_extractor": "it is in the PersonaLive release (`personalive weights download DIR`) and in LivePortrait's "
                        "(KwaiVGI/LivePortrait: liveportrait/base_models/motion_extractor.pth)",
    "xnemo": "the X-NeMo weights are distributed by their authors (CC BY-NC 4.0); pose_guider.pth by PersonaLive's",
}


@dataclass
class InitResult:
    models: object  # PersonaLiveModels
    kind: str  # "official" | "xnemo" | "scratch" | "random-tiny"
    detail: str


def initial_models(init: str | Path | None, random_init: str | None = None, seed: int = 0) -> InitResult:
    """The networks a run starts from (see the module docstring); every problem is one UserError line."""
    from personalive_cli.pipeline.components import PersonaLiveConfig, PersonaLiveModels

    if init is None:
        if random_init == "tiny":
            models = PersonaLiveModels.random(PersonaLiveConfig.tiny(), seed=seed)
            return InitResult(models, "random-tiny", f"random tiny networks (seed {seed})")
        raise UserError("training needs initial weights: --init DIR (the released PersonaLive weights, X-NeMo-style "
                        "files, or SD image-variations + motion_extractor.pth for a from-scratch run), or "
                        "--preset tiny for a random tiny smoke test")
    root = Path(init).expanduser()
    if not root.is_dir():
        raise UserError(f"--init folder not found: {root}")
    if RunFolder(root).is_run():
        from personalive_cli.training.export import load_run_models

        models, step = load_run_models(root)
        return InitResult(models, "run", f"run {root} at step {step} ({RunFolder(root).info().get('stage', '?')})")
    layout = WeightsLayout.from_root(root)
    if find_checkpoint(layout.personalive, "denoising_unet") is not None:
        models = PersonaLiveModels.from_pretrained(layout)
        return InitResult(models, "official", f"official layout {root}")
    xnemo_dir = next((d for d in (root, root / "xnemo") if _find(d, "xnemo_denoising_unet")), None)
    if xnemo_dir is not None:
        return _from_xnemo(root, layout, xnemo_dir, seed)
    if not layout.unet_config.parent.is_dir():
        raise UserError(f"--init {root} is not a weights folder: expected personalive/denoising_unet.pth (official "
                        "layout), xnemo_*.pth files (X-NeMo-style), or sd-image-variations-diffusers/unet/ (from "
                        "scratch); see `personalive train stage1 --help`")
    return _from_scratch(root, layout, seed)


def _find(folder: Path, stem: str) -> Path | None:
    return find_checkpoint(folder, stem) if folder.is_dir() else None


def _missing(path: Path, how: str) -> str:
    return f"missing {path} ({HOW_TO_GET[how]})"


def _base_parts(root: Path, layout: WeightsLayout) -> tuple[list[str], Path | None]:
    """Problems with the frozen parts every non-official init needs, and where motion_extractor.pth is."""
    problems = []
    if not layout.unet_config.is_file():
        problems.append(_missing(layout.unet_config, "sd_unet"))
    for folder in (layout.image_encoder, layout.vae):
        if not (folder / "config.json").is_file():
            problems.append(_missing(folder, "base"))
    extractor = next((p for d in (layout.personalive, root / "liveportrait" / "base_models", root)
                      if (p := _find(d, "motion_extractor")) is not None), None)
    if extractor is None:
        problems.append(_missing(layout.personalive / "motion_extractor.pth", "motion_extractor"))
    return problems, extractor


def _fail(problems: list[str], root: Path) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise UserError(f"--init {root}: {problems[0]}{more}")


def _build(layout: WeightsLayout, seed: int):
    """Freshly initialised (seeded) trainable networks of the folder's architecture, VAE and CLIP loaded.

    The container is built on the meta device and only the networks that need values are materialised:
    a random VAE and CLIP that are replaced at once would cost seconds."""
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionModelWithProjection

    from personalive_cli.models.denoising_unet import DenoisingUNet
    from personalive_cli.models.keypoint_extractor import KeypointExtractor
    from personalive_cli.models.motion_encoder import MotionEncoder
    from personalive_cli.models.pose_guider import PoseGuider
    from personalive_cli.models.reference_unet import ReferenceUNet
    from personalive_cli.pipeline.components import PersonaLiveConfig, PersonaLiveModels, _quiet_hub_progress

    _quiet_hub_progress()
    config = PersonaLiveConfig.for_layout(layout)
    with torch.device("meta"):
        models = PersonaLiveModels(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        models.reference_unet = ReferenceUNet(config.unet)
        models.denoising_unet = DenoisingUNet(config.unet)
        models.pose_guider = PoseGuider(config.pose_guider)
        models.motion_encoder = MotionEncoder(config.motion_encoder)
        models.keypoint_extractor = KeypointExtractor(config.keypoints)
    try:
        models.vae = AutoencoderKL.from_pretrained(layout.vae)
        models.image_encoder = CLIPVisionModelWithProjection.from_pretrained(layout.image_encoder)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"cannot load base model ({str(exc).splitlines()[0]})") from None
    config.vae, config.clip = dict(models.vae.config), models.image_encoder.config.to_dict()
    return models.eval().requires_grad_(False)


def load_by_name(module: nn.Module, state: dict[str, torch.Tensor], source: Path, required: list[str]) -> int:
    """Copy every key of ``state`` that ``module`` has (same shape) into it; keys ``module`` lacks are ignored.
    Keys in ``required`` that ``state`` does not hold, and shape mismatches, are one UserError. Returns the
    number of keys loaded."""
    own = module.state_dict()
    expected = {k: v.shape for k, v in own.items()}
    merged, problems = compare_keys(expected, [(source, state)], optional=set(expected) - set(required),
                                    ignorable=set(state) - set(expected))
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise UserError(f"weights do not match the model: {problems[0]}{more}")
    module.load_state_dict(merged, strict=False)
    return len(merged)


def _spatial_keys(module: nn.Module) -> list[str]:
    return [k for k in module.state_dict() if ".motion_modules." not in k and ".temporal_modules." not in k
            and not k.endswith("pos_encoder.pe")]


def _load_extractor(models, path: Path) -> None:
    from personalive_cli.weights import load_exact

    load_exact(models.keypoint_extractor, [path], ignorable=["idx_tensor"])


def _from_xnemo(root: Path, layout: WeightsLayout, xnemo_dir: Path, seed: int) -> InitResult:
    problems, extractor = _base_parts(root, layout)
    files = {}
    for stem in XNEMO_FILES:
        found = _find(xnemo_dir, stem) or _find(root, stem)
        if found is None:
            problems.append(_missing(xnemo_dir / f"{stem}.pth", "xnemo"))
        files[stem] = found
    _fail(problems, root)
    models = _build(layout, seed)
    unet = models.denoising_unet
    trained = [k for k in unet.state_dict() if ".temporal_modules." not in k]
    load_by_name(unet, read_state_dict(files["xnemo_denoising_unet"]), files["xnemo_denoising_unet"], trained)
    temporal = _find(xnemo_dir, "xnemo_temporal_module")
    if temporal is not None:
        keys = [k for k in unet.state_dict() if ".temporal_modules." in k and not k.endswith("pos_encoder.pe")]
        load_by_name(unet, read_state_dict(temporal), temporal, keys)
    ref = models.reference_unet
    load_by_name(ref, read_state_dict(files["xnemo_reference_unet"]), files["xnemo_reference_unet"],
                 list(ref.state_dict()))
    enc_state = read_state_dict(files["xnemo_motion_encoder"])
    proj = models.motion_encoder.final_proj.weight
    weight = enc_state.get("final_proj.weight")
    if weight is not None and weight.ndim == 2 and weight.shape[0] == proj.shape[0] and weight.shape[1] > proj.shape[1]:
        # X-NeMo's final projection also reads extra inputs; PersonaLive keeps the first 512 columns.
        enc_state["final_proj.weight"] = weight[:, : proj.shape[1]]
    enc = models.motion_encoder
    load_by_name(enc, enc_state, files["xnemo_motion_encoder"], [k for k in enc.state_dict() if k != "pe"])
    guider = models.pose_guider
    load_by_name(guider, read_state_dict(files["pose_guider"]), files["pose_guider"], list(guider.state_dict()))
    _load_extractor(models, extractor)
    detail = f"X-NeMo-style files in {xnemo_dir}" + ("" if temporal else " (temporal modules new: none given)")
    return InitResult(models, "xnemo", detail)


def _from_scratch(root: Path, layout: WeightsLayout, seed: int) -> InitResult:
    problems, extractor = _base_parts(root, layout)
    unet_dir = layout.unet_config.parent
    weights = next((unet_dir / n for n in SD_UNET_WEIGHTS if (unet_dir / n).is_file()), None)
    if weights is None and layout.unet_config.is_file():
        problems.append(_missing(unet_dir / SD_UNET_WEIGHTS[0], "sd_unet"))
    _fail(problems, root)
    models = _build(layout, seed)
    state = read_state_dict(weights)
    load_by_name(models.reference_unet, state, weights, list(models.reference_unet.state_dict()))
    load_by_name(models.denoising_unet, state, weights, _spatial_keys(models.denoising_unet))
    # The new modules start as identities / no-ops whatever the architecture's own init flag says.
    for name, module in models.denoising_unet.named_modules():
        if name.endswith("temporal_transformer.proj_out"):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.zeros_(models.pose_guider.conv_out_modify.weight)
    nn.init.zeros_(models.pose_guider.conv_out_modify.bias)
    _load_extractor(models, extractor)
    return InitResult(models, "scratch", f"SD image-variations UNet {weights} (new modules zero-initialised)")


def initial_discriminator(config):
    """The discriminator a Stage II/III run starts from (training.md §6): from ``discriminator_init`` (the
    FFHQ-512 StyleGAN2 file, loaded non-strictly: its timestep layers are new; or a run folder), else from the
    ``--init`` run's newest checkpoint when it has one (Stage III from Stage II, strictly), else random."""
    from personalive_cli.training.discriminator import Discriminator, DiscriminatorConfig, load_discriminator

    size = config.size
    if size & (size - 1):
        raise UserError(f"the StyleGAN2 discriminator needs a power-of-two size (e.g. 256 or 512), got size {size}; "
                        "change --set size or train without it (--set gan=false)")
    dconfig = DiscriminatorConfig(resolution=size, channel_base=config.discriminator_channels)
    source = config.discriminator_init
    if source is not None and not RunFolder(Path(source).expanduser()).is_run():
        return load_discriminator(source, dconfig)
    run = Path(source if source is not None else config.init or "").expanduser()
    if (source is not None or config.init) and RunFolder(run).is_run():
        state = _run_discriminator_state(run)
        if state is not None:
            model = Discriminator(dconfig)  # (not load_discriminator(None): it logs "random initialisation")
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected or any(state[k].shape != v.shape for k, v in model.state_dict().items()):
                raise UserError(f"the discriminator of run {run} does not fit this run's (size {size}, "
                                f"discriminator_channels {config.discriminator_channels})")
            log.info("discriminator: from run %s", run)
            return model
        if source is not None:
            raise UserError(f"run {run} has no discriminator in its newest checkpoint")
    return load_discriminator(None, dconfig)


def _run_discriminator_state(run: Path) -> dict[str, torch.Tensor] | None:
    """The discriminator weights in a run's newest checkpoint (accelerate's second model), or None."""
    from safetensors.torch import load_file

    folder = RunFolder(run)
    steps = folder.checkpoint_steps()
    path = folder.checkpoint(steps[-1]) / "model_1.safetensors" if steps else None
    if path is None or not path.is_file():
        return None
    prefix = "discriminator."
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged file in any way is one line
        raise UserError(f"cannot read {path} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                        ) from None
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)} or None


__all__ = ["InitResult", "initial_discriminator", "initial_models", "load_by_name"]
