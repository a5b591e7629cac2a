"""--init: X-NeMo-style files mapped by name, a from-scratch start from the SD UNet, and the errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from personalive_cli.errors import UserError
from personalive_cli.training.init import initial_models


def _base(root: Path, tiny_weights: Path) -> Path:
    """The frozen parts every non-official init needs, plus our tiny architecture (personalive/config.json)."""
    for part in ("sd-image-variations-diffusers", "sd-vae-ft-mse"):
        shutil.copytree(tiny_weights / part, root / part)
    (root / "personalive").mkdir(parents=True)
    for name in ("config.json", "motion_extractor.pth"):
        shutil.copy(tiny_weights / "personalive" / name, root / "personalive" / name)
    return root


def _equal(module, state: dict, keys) -> bool:
    own = module.state_dict()
    return all(torch.equal(own[k], state[k]) for k in keys)


@pytest.fixture(scope="module")
def xnemo_dir(tmp_path_factory, tiny_weights, tiny_models) -> Path:
    root = _base(tmp_path_factory.mktemp("xnemo"), tiny_weights)
    x = root / "xnemo"
    x.mkdir()
    unet = {k: v for k, v in tiny_models.denoising_unet.state_dict().items() if ".temporal_modules." not in k}
    torch.save({**unet, "x_nemo_only.weight": torch.zeros(3)}, x / "xnemo_denoising_unet.pth")
    ref = tiny_models.reference_unet.state_dict()
    head = {k: v for k, v in tiny_models.denoising_unet.state_dict().items() if k.startswith("conv_")}
    torch.save({**ref, **{k: v for k, v in head.items() if k != "conv_in.weight" and k != "conv_in.bias"}},
               x / "xnemo_reference_unet.pth")  # X-NeMo's reference UNet keeps SD's output head
    enc = dict(tiny_models.motion_encoder.state_dict())
    w = enc["final_proj.weight"]
    enc["final_proj.weight"] = torch.cat([w, torch.randn(w.shape[0], 64)], dim=1)  # X-NeMo's extra inputs
    torch.save(enc, x / "xnemo_motion_encoder.pth")
    torch.save(tiny_models.pose_guider.state_dict(), root / "pose_guider.pth")
    return root


def test_xnemo_files_are_mapped_by_name(xnemo_dir, tiny_models):
    result = initial_models(xnemo_dir, seed=1)
    m, src = result.models, tiny_models
    assert result.kind == "xnemo" and "temporal modules new" in result.detail
    unet_keys = [k for k in src.denoising_unet.state_dict() if ".temporal_modules." not in k]
    assert _equal(m.denoising_unet, src.denoising_unet.state_dict(), unet_keys)
    assert _equal(m.reference_unet, src.reference_unet.state_dict(), src.reference_unet.state_dict())
    assert _equal(m.pose_guider, src.pose_guider.state_dict(), src.pose_guider.state_dict())
    assert _equal(m.motion_encoder, src.motion_encoder.state_dict(), src.motion_encoder.state_dict())
    assert _equal(m.keypoint_extractor, src.keypoint_extractor.state_dict(), src.keypoint_extractor.state_dict())


def test_xnemo_missing_key_and_missing_file(xnemo_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(xnemo_dir, bad)
    path = bad / "xnemo" / "xnemo_denoising_unet.pth"
    state = torch.load(path)
    dropped = next(k for k in state if ".motion_modules." in k)
    del state[dropped]
    torch.save(state, path)
    with pytest.raises(UserError, match=f"missing keys {dropped}"):
        initial_models(bad)
    (bad / "pose_guider.pth").unlink()
    with pytest.raises(UserError, match=r"missing .*pose_guider\.pth \(the X-NeMo weights"):
        initial_models(bad)


def test_from_scratch_with_the_sd_unet(tmp_path, tiny_weights, tiny_models):
    root = _base(tmp_path / "sd", tiny_weights)
    unet_dir = root / "sd-image-variations-diffusers" / "unet"
    with pytest.raises(UserError, match=r"missing .*diffusion_pytorch_model\.safetensors \(download it"):
        initial_models(root)
    src = tiny_models
    sd = {**src.reference_unet.state_dict(),
          **{k: v for k, v in src.denoising_unet.state_dict().items() if k.startswith("conv_norm_out") or
             k.startswith("conv_out")}}
    save_file({k: v.contiguous() for k, v in sd.items()}, unet_dir / "diffusion_pytorch_model.safetensors")
    result = initial_models(root, seed=3)
    m = result.models
    assert result.kind == "scratch"
    assert _equal(m.reference_unet, sd, src.reference_unet.state_dict())
    spatial = [k for k in m.denoising_unet.state_dict() if ".motion_modules." not in k and ".temporal_modules." not in k]
    assert _equal(m.denoising_unet, sd, spatial)
    new_out = [p for n, p in m.denoising_unet.named_parameters() if "temporal_transformer.proj_out" in n]
    assert new_out and all(not p.any() for p in new_out)  # new modules start as identities
    assert not m.pose_guider.conv_out_modify.weight.any()
    (root / "personalive" / "motion_extractor.pth").unlink()
    with pytest.raises(UserError, match=r"missing .*motion_extractor\.pth \(it is in the PersonaLive release"):
        initial_models(root)


def test_not_a_weights_folder(tmp_path):
    with pytest.raises(UserError, match="is not a weights folder"):
        initial_models(tmp_path)
    with pytest.raises(UserError, match="--init folder not found"):
        initial_models(tmp_path / "nope")
    with pytest.raises(UserError, match="training needs initial weights"):
        initial_models(None)
