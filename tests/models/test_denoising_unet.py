"""Denoising UNet: official key layout, per-frame conditioning, motion/temporal modules, reference K/V."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from personalive_cli.models.denoising_unet import DenoisingUNet, DenoisingUNetConfig
from personalive_cli.models.motion_modules import PositionalEncoding

MANIFEST = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "personalive_checkpoints.json"
SD_CONFIG = MANIFEST.parent / "configs" / "unet" / "config.json"

B, F_, H, W = 1, 16, 8, 8
TS = torch.tensor([0] * 4 + [333] * 4 + [666] * 4 + [999] * 4)



def _manifest() -> dict:
    if not MANIFEST.is_file():
        pytest.skip(f"checkpoint manifest not found at {MANIFEST}")
    return json.loads(MANIFEST.read_text())["files"]


def _tiny(seed: int = 0, **overrides) -> DenoisingUNet:
    torch.manual_seed(seed)
    return DenoisingUNet(DenoisingUNetConfig.tiny(**overrides)).eval()


def _zero_frame_mixing(model: DenoisingUNet) -> None:
    """Zero the temporal modules' proj_out: they become identities, so frames no longer interact."""
    for name, p in model.named_parameters():
        if ".temporal_modules." in name and "temporal_transformer.proj_out" in name:
            p.data.zero_()


def _inputs(seed: int = 1, b: int = B, f: int = F_, h: int = H, w: int = W, c0: int = 32):
    g = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(b, 4, f, h, w, generator=g),
        timesteps=TS[:f] if f == len(TS) else torch.randint(0, 1000, (f,), generator=g),
        clip_embeds=torch.randn(b, 1, 768, generator=g),
        motion_tokens=torch.randn(b, f, 32, 16, generator=g),
        pose_features=torch.randn(b, c0, f, h, w, generator=g),
    )


def _frame_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Max |a - b| per frame, (f,)."""
    return (a - b).abs().amax(dim=(0, 1, 3, 4))


# ---------------------------------------------------------------------------------------------- layout


def test_full_size_keys_and_shapes_match_official_files():
    files = _manifest()
    expected = {**files["denoising_unet.pth"], **files["temporal_module.pth"]}  # temporal file loaded last
    with torch.device("meta"):
        model = DenoisingUNet()
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: v for k, v in got.items() if v != expected[k]} == {}
    assert len(got) == 1232 + 588
    assert len(model.attention_block_names()) == 16
    assert sum(1 for k in got if k.endswith("pos_encoder.pe")) == 42


def test_config_from_sd_unet_json_equals_defaults():
    if not SD_CONFIG.is_file():
        pytest.skip("SD unet config not found")
    assert DenoisingUNetConfig.from_sd_unet_config(SD_CONFIG) == DenoisingUNetConfig()
    with pytest.raises(ValueError):
        DenoisingUNetConfig.from_sd_unet_dict({"use_linear_projection": True})


# ---------------------------------------------------------------------------------------------- forward


def test_forward_shape_and_timestep_forms():
    model = _tiny()
    x = _inputs(b=2, f=4, h=16, w=12)
    x["timesteps"] = torch.tensor([0, 333, 666, 999])
    with torch.no_grad():
        out = model(**x)
        assert out.shape == (2, 4, 4, 16, 12)
        assert torch.isfinite(out).all()
        flat = model(**{**x, "timesteps": x["timesteps"].repeat(2)})  # (b*f,) in (b, f) order
    assert torch.allclose(out, flat, atol=1e-6)


def test_odd_latent_size():
    model = _tiny()
    with torch.no_grad():
        out = model(**_inputs(f=2, h=10, w=6))
    assert out.shape == (1, 4, 2, 10, 6)


def test_2d_path_matches_diffusers_unet_per_frame():
    """Motion and temporal modules zero-initialised = identities: each frame is SD's UNet2DConditionModel."""
    from diffusers import UNet2DConditionModel

    model = _tiny(zero_init_modules=True)
    cfg = model.config
    ref = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=cfg.block_out_channels,
        down_block_types=cfg.down_block_types,
        up_block_types=cfg.up_block_types,
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_heads,
        cross_attention_dim=cfg.cross_attention_dim,
        norm_num_groups=cfg.norm_num_groups,
    ).eval()
    mine = model.state_dict()
    theirs = ref.state_dict()
    assert set(theirs) <= set(mine)
    ref.load_state_dict({k: mine[k] for k in theirs}, strict=True)

    x = _inputs(f=4)
    x["pose_features"] = None
    with torch.no_grad():
        out = model(**x)
        frames = x["sample"][0].permute(1, 0, 2, 3)  # (f, 4, h, w)
        expect = ref(frames, x["timesteps"], x["clip_embeds"].expand(4, -1, -1)).sample
    assert torch.allclose(out[0].permute(1, 0, 2, 3), expect, atol=1e-5)


def test_pose_features_are_added_right_after_conv_in():
    """A pose feature constant per channel equals adding it to conv_in's bias."""
    model = _tiny()
    x = _inputs(f=4)
    const = torch.randn(32)
    x["pose_features"] = const.view(1, 32, 1, 1, 1).expand(1, 32, 4, H, W)
    with torch.no_grad():
        out = model(**x)
        model.conv_in.bias += const
        shifted = model(**{**x, "pose_features": None})
    assert torch.allclose(out, shifted, atol=1e-5)


def test_per_frame_timestep_conditions_only_that_frame_without_temporal_mixing():
    model = _tiny()
    _zero_frame_mixing(model)
    x = _inputs()
    t2 = TS.clone()
    t2[5] = 900
    with torch.no_grad():
        diff = _frame_diff(model(**x), model(**{**x, "timesteps": t2}))
    assert diff[5] > 1e-3
    assert torch.all(diff[torch.arange(F_) != 5] == 0)


def test_per_frame_timestep_reaches_other_frames_through_temporal_modules():
    model = _tiny()
    x = _inputs()
    t2 = TS.clone()
    t2[5] = 900
    with torch.no_grad():
        diff = _frame_diff(model(**x), model(**{**x, "timesteps": t2}))
    assert diff[5] > 1e-3
    assert (diff[torch.arange(F_) != 5] > 1e-6).all()


def test_motion_tokens_of_frame_i_only_affect_frame_i_without_temporal_mixing():
    model = _tiny()
    x = _inputs()
    m2 = x["motion_tokens"].clone()
    m2[:, 7] += 1.0
    with torch.no_grad():
        mixed = _frame_diff(model(**x), model(**{**x, "motion_tokens": m2}))
        _zero_frame_mixing(model)
        local = _frame_diff(model(**x), model(**{**x, "motion_tokens": m2}))
    assert local[7] > 1e-3
    assert torch.all(local[torch.arange(F_) != 7] == 0)
    assert (mixed[torch.arange(F_) != 7] > 1e-6).all()


def test_frames_processed_independently_without_temporal_mixing():
    model = _tiny()
    _zero_frame_mixing(model)
    x = _inputs(f=4)
    with torch.no_grad():
        full = model(**x)
        one = model(
            x["sample"][:, :, 2:3], x["timesteps"][2:3], x["clip_embeds"], x["motion_tokens"][:, 2:3],
            x["pose_features"][:, :, 2:3],
        )
    assert torch.allclose(full[:, :, 2:3], one, atol=1e-5)



def test_temporal_false_skips_the_temporal_modules():
    """temporal=False (training Stages I/II) equals identity temporal modules, whatever their weights, and
    leaves them out of the autograd graph; the default still runs them."""
    model = _tiny()
    x = _inputs(f=4)
    with torch.no_grad():
        on = model(**x)
        off = model(**x, temporal=False)
        _zero_frame_mixing(model)
        identity = model(**x)
    assert torch.equal(off, identity)
    assert not torch.allclose(on, off, atol=1e-4)
    model(**x, temporal=False).square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None for n, g in grads.items() if ".temporal_modules." in n)
    assert all(g is not None for n, g in grads.items() if ".motion_modules." in n)

def test_temporal_position_encoding_makes_frame_order_matter():
    """Without PE, temporal self-attention is permutation-equivariant over frames; with it, it is not."""
    model = _tiny()
    x = _inputs(f=4)
    x["timesteps"] = torch.full((4,), 500)
    perm = torch.tensor([3, 2, 1, 0])
    xp = {
        **x,
        "sample": x["sample"][:, :, perm],
        "motion_tokens": x["motion_tokens"][:, perm],
        "pose_features": x["pose_features"][:, :, perm],
    }
    with torch.no_grad():
        gap = (model(**x)[:, :, perm] - model(**xp)).abs().max()
        for m in model.modules():
            if isinstance(m, PositionalEncoding):
                m.pe.zero_()
        no_pe = (model(**x)[:, :, perm] - model(**xp)).abs().max()
    assert gap > 1e-4
    assert no_pe < 1e-5


# ---------------------------------------------------------------------------------------------- banks


def _random_banks(model: DenoisingUNet, levels: dict[int, int], n_refs: int = 1, seed: int = 3):
    """Bank tokens (1, n_refs * L, C) per block; levels maps channel width -> tokens per reference."""
    g = torch.Generator().manual_seed(seed)
    banks = {}
    for name in model.attention_block_names():
        c = model.get_submodule(name).norm1.normalized_shape[0]
        hw = levels[name]
        banks[name] = torch.randn(1, n_refs * hw, c, generator=g)
    return banks


def _levels(model: DenoisingUNet, x: dict) -> dict[str, int]:
    """Tokens per frame seen by each spatial block (recorded with forward pre-hooks on a plain pass)."""
    sizes: dict[str, int] = {}
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda mod, args, name=name: sizes.__setitem__(name, args[0].shape[1])
        )
        for name in model.attention_block_names()
    ]
    with torch.no_grad():
        model(**x)
    for hook in hooks:
        hook.remove()
    return sizes


class _NaiveBankProcessor:
    """diffusers' stock processor with the bank *tokens* appended to the keys/values source (re-projected on
    every call, as the official code does)."""

    reads_reference_kv = True

    def __init__(self, bank: torch.Tensor) -> None:
        self.bank = bank

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        bank = self.bank.expand(hidden_states.shape[0], -1, -1)
        return AttnProcessor2_0()(attn, hidden_states, torch.cat([hidden_states, bank], dim=1))


def test_bank_kv_equals_naive_concatenation():
    model = _tiny()
    x = _inputs(f=4)
    banks = _random_banks(model, _levels(model, x), n_refs=2)
    kv = model.bank_kv(banks)
    with torch.no_grad():
        fast = model(**x, bank_kv=kv)
        plain = model(**x)
    naive = {k: (_NaiveBankProcessor(banks[k[: -len(".attn1.processor")]]) if k.endswith(".attn1.processor")
                 and k[: -len(".attn1.processor")] in banks else AttnProcessor2_0())
             for k in model.attn_processors}
    model.set_attn_processor(naive)
    with torch.no_grad():
        slow = model(**x, bank_kv=kv)  # the naive processors ignore the cached K/V
    assert torch.allclose(fast, slow, atol=1e-5)
    assert (fast - plain).abs().max() > 1e-3  # the bank matters


def test_bank_kv_concatenation_of_references_is_exact():
    model = _tiny()
    levels = _levels(model, _inputs(f=1))
    a = _random_banks(model, levels, seed=1)
    b = _random_banks(model, levels, seed=2)
    with torch.no_grad():
        kv_a, kv_b = model.bank_kv(a), model.bank_kv(b)
        kv_ab = model.bank_kv({k: torch.cat([a[k], b[k]], dim=1) for k in a})
    for k in a:
        for i in range(2):
            assert torch.allclose(torch.cat([kv_a[k][i], kv_b[k][i]], dim=1), kv_ab[k][i], atol=1e-6)


def test_bank_kv_none_equals_empty_and_rejects_unknown_names():
    model = _tiny()
    x = _inputs(f=2)
    with torch.no_grad():
        none = model(**x, bank_kv=None)
        empty = model(**x, bank_kv={})
        assert torch.equal(none, empty)
        with pytest.raises(KeyError):
            model(**x, bank_kv={"down_blocks.9.nope": (torch.zeros(1, 1, 32), torch.zeros(1, 1, 32))})


