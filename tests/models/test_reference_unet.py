"""Reference UNet: official key layout, bank names/shapes, equality with diffusers' SD UNet LayerNorm1 outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from personalive_cli.models.denoising_unet import DenoisingUNet, DenoisingUNetConfig
from personalive_cli.models.reference_unet import ReferenceUNet

MANIFEST = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "personalive_checkpoints.json"



def _tiny(seed: int = 0) -> ReferenceUNet:
    torch.manual_seed(seed)
    return ReferenceUNet(DenoisingUNetConfig.tiny()).eval()


def test_full_size_keys_and_shapes_match_official_file():
    if not MANIFEST.is_file():
        pytest.skip(f"checkpoint manifest not found at {MANIFEST}")
    expected = json.loads(MANIFEST.read_text())["files"]["reference_unet.pth"]
    with torch.device("meta"):
        model = ReferenceUNet()
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: v for k, v in got.items() if v != expected[k]} == {}
    assert len(got) == 682


def test_bank_names_and_shapes():
    model = _tiny()
    cfg = model.config
    b, h, w = 2, 16, 24
    with torch.no_grad():
        banks = model(torch.randn(b, 4, h, w), torch.randn(b, 1, 768))
    names = DenoisingUNet(DenoisingUNetConfig.tiny()).attention_block_names()
    assert list(banks) == names == model.attention_block_names()
    assert len(names) == 16
    n_down = len(cfg.block_out_channels) - 1
    for name, bank in banks.items():
        part = name.split(".")[0]
        if part == "mid_block":
            level = n_down
        else:
            i = int(name.split(".")[1])
            level = i if part == "down_blocks" else n_down - i
        width = cfg.block_out_channels[level]
        assert bank.shape == (b, (h >> level) * (w >> level), width), name


def test_banks_equal_diffusers_unet_layernorm1_outputs():
    """Same weights in diffusers' UNet2DConditionModel; hooks on every block's norm1 give the reference."""
    from diffusers import UNet2DConditionModel

    model = _tiny()
    cfg = model.config
    sd_unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=cfg.block_out_channels,
        down_block_types=cfg.down_block_types,
        up_block_types=cfg.up_block_types,
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_heads,
        cross_attention_dim=cfg.cross_attention_dim,
        norm_num_groups=cfg.norm_num_groups,
    ).eval()
    result = sd_unet.load_state_dict(model.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == ["conv_norm_out.bias", "conv_norm_out.weight", "conv_out.bias",
                                           "conv_out.weight"]
    captured = {}
    for name in model.attention_block_names():
        sd_unet.get_submodule(name).norm1.register_forward_hook(
            lambda mod, args, out, name=name: captured.__setitem__(name, out)
        )
    latent, clip = torch.randn(1, 4, 16, 16), torch.randn(1, 1, 768)
    with torch.no_grad():
        banks = model(latent, clip)
        sd_unet(latent, torch.zeros(1), clip)
    assert set(banks) == set(captured)
    for name in banks:
        assert torch.allclose(banks[name], captured[name], atol=1e-5), name


def test_forward_stops_after_the_last_bank():
    model = _tiny()
    last = model.get_submodule(model.attention_block_names()[-1])
    calls = []
    last.attn1.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(torch.randn(1, 4, 8, 8), torch.randn(1, 1, 768))
    assert calls == []


def test_batch_rows_are_independent():
    model = _tiny()
    latent, clip = torch.randn(2, 4, 8, 8), torch.randn(2, 1, 768)
    with torch.no_grad():
        both = model(latent, clip)
        second = model(latent[1:], clip[1:])
    for name in both:
        assert torch.allclose(both[name][1:], second[name], atol=1e-5)


def test_banks_feed_the_denoising_unet():
    cfg = DenoisingUNetConfig.tiny()
    torch.manual_seed(0)
    ref, unet = ReferenceUNet(cfg).eval(), DenoisingUNet(cfg).eval()
    f, h, w = 4, 8, 8
    with torch.no_grad():
        banks = ref(torch.randn(1, 4, h, w), torch.randn(1, 1, 768))
        kv = unet.bank_kv(banks)
        eps = unet(
            torch.randn(1, 4, f, h, w), torch.tensor([0, 333, 666, 999]), torch.randn(1, 1, 768),
            torch.randn(1, f, 32, 16), torch.randn(1, 32, f, h, w), bank_kv=kv,
        )
    assert eps.shape == (1, 4, f, h, w)
    assert torch.isfinite(eps).all()
