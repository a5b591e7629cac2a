"""Every network is a diffusers model: strict configs, save/load round trips (atomic saves), gradient
checkpointing that gives the same gradients, and ``Net(cfg)`` == ``Net.from_config(cfg.to_dict())``."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
import safetensors.torch
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin

from personalive_cli.models.denoising_unet import DenoisingUNet, DenoisingUNetConfig
from personalive_cli.models.keypoint_extractor import KeypointExtractor, KeypointExtractorConfig
from personalive_cli.models.motion_encoder import MotionEncoder, MotionEncoderConfig
from personalive_cli.models.pose_guider import PoseGuider, PoseGuiderConfig
from personalive_cli.models.reference_unet import ReferenceUNet


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere (zero-initialised outputs and BatchNorm statistics included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.ndim == 1 and "norm" in str(p) else 0.0))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def _unet_inputs(f: int = 2):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(1, 4, f, 8, 8, generator=g), torch.tensor([0, 999])[:f], torch.randn(1, 1, 768, generator=g),
            torch.randn(1, f, 32, 16, generator=g))


def _case(name: str):
    """(model class, config dataclass, tiny config, fn(model) -> a scalar depending on every output)."""
    unet_cfg = DenoisingUNetConfig.tiny()
    if name == "pose_guider":
        canvas = torch.rand(1, 3, 2, 32, 32, generator=torch.Generator().manual_seed(2))
        return PoseGuider, PoseGuiderConfig, PoseGuiderConfig.tiny(), lambda m: m(canvas)
    if name == "motion_encoder":
        faces = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
        return MotionEncoder, MotionEncoderConfig, MotionEncoderConfig.tiny(image_size=64), lambda m: m(faces)
    if name == "keypoint_extractor":
        images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))

        def run(m):
            info = m(images, with_exp=True)
            return torch.cat([v.flatten() for v in (info.kp, info.pitch, info.yaw, info.roll, info.t, info.scale,
                                                    info.exp)])
        return KeypointExtractor, KeypointExtractorConfig, KeypointExtractorConfig.tiny(), run
    if name == "reference_unet":
        latent, clip = torch.randn(1, 4, 8, 8), torch.randn(1, 1, 768)
        return ReferenceUNet, DenoisingUNetConfig, unet_cfg, lambda m: torch.cat(
            [b.flatten() for b in m(latent, clip).values()])
    if name == "denoising_unet":
        torch.manual_seed(3)
        banks = ReferenceUNet(unet_cfg).eval()(torch.randn(1, 4, 8, 8), torch.randn(1, 1, 768))
        banks = {k: v.detach() for k, v in banks.items()}
        return DenoisingUNet, DenoisingUNetConfig, unet_cfg, lambda m: m(*_unet_inputs(), bank_kv=m.bank_kv(banks))
    raise KeyError(name)


NAMES = ["pose_guider", "motion_encoder", "keypoint_extractor", "reference_unet", "denoising_unet"]


def _build(name: str):
    cls, _, cfg, run = _case(name)
    torch.manual_seed(0)
    return _randomise(cls(cfg)), run


@pytest.mark.parametrize("name", NAMES)
def test_is_a_diffusers_model_with_the_dataclass_defaults(name):
    cls, config_cls, cfg, _ = _case(name)
    assert issubclass(cls, ModelMixin) and issubclass(cls, ConfigMixin)
    params = inspect.signature(cls.__init__).parameters
    defaults = {k: v.default for k, v in params.items() if k != "self"}
    expected = config_cls().to_dict() if cls is not ReferenceUNet else config_cls().spatial_dict()
    assert defaults == expected  # one architecture, two spellings: keep them in step
    kwargs = cfg.to_dict() if cls is not ReferenceUNet else cfg.spatial_dict()
    torch.manual_seed(0)
    a = cls(cfg)
    torch.manual_seed(0)
    b = cls.from_config(kwargs)
    assert dict(a.config) == dict(b.config)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_config_keys_are_errors(name, tmp_path):
    cls, _, cfg, _ = _case(name)
    kwargs = cfg.to_dict() if cls is not ReferenceUNet else cfg.spatial_dict()
    with pytest.raises(ValueError, match="unknown keys: bogus"):
        cls.from_config({**kwargs, "bogus": 1})
    with pytest.raises(TypeError):
        cls(**kwargs, bogus=1)
    model, _ = _build(name)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "layers_per_blok": 2}))
    with pytest.raises(ValueError, match="unknown keys: layers_per_blok"):
        cls.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_save_pretrained_from_pretrained_round_trip(name, tmp_path):
    model, run = _build(name)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.no_grad():
        # Same weights bit for bit; outputs to the last ulp only (loaded tensors may sit at other memory
        # alignments, which can change the CPU kernels' summation order).
        torch.testing.assert_close(run(model), run(loaded), rtol=1e-6, atol=1e-7)


def test_save_pretrained_is_atomic(tmp_path, monkeypatch):
    model, _ = _build("pose_guider")
    model.save_pretrained(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    other, _ = _build("pose_guider")
    with torch.no_grad():
        other.conv_in.weight.add_(1)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(tmp_path / "m")
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging folder left behind
    monkeypatch.undo()
    other.save_pretrained(tmp_path / "m", safe_serialization=False)  # a .bin replaces the .safetensors
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "diffusion_pytorch_model.bin"]
    assert torch.equal(PoseGuider.from_pretrained(tmp_path / "m").conv_in.weight, other.conv_in.weight)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_gives_the_same_gradients(name):
    model, run = _build(name)
    model.requires_grad_(True)

    def grads():
        model.zero_grad(set_to_none=True)
        run(model).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    assert not model.is_gradient_checkpointing
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    ckpt = grads()
    assert plain.keys() == ckpt.keys() and len(plain) > 0
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing


def test_gradient_checkpointing_recomputes_layers():
    model, run = _build("denoising_unet")
    model.requires_grad_(True)
    calls = []
    model.down_blocks[0].resnets[0].register_forward_hook(lambda *a: calls.append(1))
    run(model).sum().backward()
    assert len(calls) == 1
    calls.clear()
    model.enable_gradient_checkpointing()
    run(model).sum().backward()
    assert len(calls) == 2  # forward, then again in backward
    calls.clear()
    with torch.no_grad():
        run(model)
    assert len(calls) == 1  # inference is not affected


def test_config_dataclass_round_trip():
    cfg = DenoisingUNetConfig.tiny()
    assert dataclasses.replace(cfg) == cfg
    assert DenoisingUNet(cfg).config.block_out_channels == cfg.block_out_channels  # tuples, not lists


@pytest.mark.parametrize("name", NAMES)
def test_every_model_has_attention_processors(name):
    from diffusers.models.attention_processor import AttnProcessor

    model, run = _build(name)
    procs = model.attn_processors
    assert (len(procs) > 0) == (name in ("motion_encoder", "reference_unet", "denoising_unet"))
    if name == "denoising_unet":
        return  # the reference processors are covered by test_attention_processor.py
    with torch.no_grad():
        before = run(model)
        model.set_attn_processor(AttnProcessor())
        after = run(model)
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-5)
