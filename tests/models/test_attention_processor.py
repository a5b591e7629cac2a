"""Attention processors: reference K/V read from the cache, backends, set_attn_processor."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from personalive_cli.models.attention_processor import (
    ReferenceAttnProcessor2_0,
    XFormersReferenceAttnProcessor,
    bind_reference_kv,
    expand_reference_kv,
)
from personalive_cli.models.denoising_unet import DenoisingUNet, DenoisingUNetConfig
from personalive_cli.models.reference_unet import ReferenceUNet


def _tiny(seed: int = 0) -> DenoisingUNet:
    torch.manual_seed(seed)
    return DenoisingUNet(DenoisingUNetConfig.tiny()).eval()


def _inputs(f: int = 2, h: int = 8, w: int = 8):
    g = torch.Generator().manual_seed(1)
    return dict(sample=torch.randn(1, 4, f, h, w, generator=g), timesteps=torch.randint(0, 1000, (f,), generator=g),
                clip_embeds=torch.randn(1, 1, 768, generator=g), motion_tokens=torch.randn(1, f, 32, 16, generator=g))


def test_reference_processor_equals_stock_attention_on_concatenated_tokens():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16).eval()
    x, bank = torch.randn(6, 10, 32), torch.randn(2, 7, 32)  # 2 batch entries x 3 frames, one bank each
    kv = (attn.to_k(bank), attn.to_v(bank))
    attn.set_processor(ReferenceAttnProcessor2_0())
    with torch.no_grad(), bind_reference_kv(attn, kv):
        got = attn(x)
    assert attn.reference_kv is None  # unbound after the call
    attn.set_processor(AttnProcessor())  # diffusers' plain (non-SDPA) maths, as the reference
    with torch.no_grad():
        want = attn(x, encoder_hidden_states=torch.cat([x, bank.repeat_interleave(3, dim=0)], dim=1))
        plain = attn(x)
        attn.set_processor(ReferenceAttnProcessor2_0())
        unbound = attn(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unbound, plain, atol=1e-5, rtol=1e-5)


def test_expand_reference_kv():
    t = torch.arange(6.0).reshape(2, 3, 1)
    assert expand_reference_kv(t[:1], 4).shape == (4, 3, 1)
    assert torch.equal(expand_reference_kv(t, 4)[:, 0, 0], torch.tensor([0.0, 0.0, 3.0, 3.0]))
    with pytest.raises(ValueError):
        expand_reference_kv(t, 3)


def test_default_processors_and_set_attn_processor():
    model = _tiny()
    procs = model.attn_processors
    ref = {f"{n}.attn1.processor" for n in model.attention_block_names()}
    assert all(isinstance(p, ReferenceAttnProcessor2_0) for k, p in procs.items() if k in ref)
    assert all(isinstance(p, AttnProcessor2_0) for k, p in procs.items() if k not in ref)
    # motion and temporal modules' attentions are stock Attention layers with stock processors too
    assert any(".motion_modules." in k for k in procs) and any(".temporal_modules." in k for k in procs)
    assert all(isinstance(p, AttnProcessor2_0) for p in ReferenceUNet(DenoisingUNetConfig.tiny()).attn_processors.values())

    x = _inputs()
    with torch.no_grad():
        before = model(**x)
        model.set_attn_processor(AttnProcessor())  # one processor everywhere: no banks now, same maths
        after = model(**x)
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="does not read reference K/V"):
        name = model.attention_block_names()[0]
        model(**x, bank_kv={name: (torch.zeros(1, 1, 32), torch.zeros(1, 1, 32))})
    with pytest.raises(ValueError, match="every attention layer"):
        model.set_attn_processor({"down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor": AttnProcessor()})
    model.set_default_attn_processor()
    assert {type(p) for p in model.attn_processors.values()} == {ReferenceAttnProcessor2_0, AttnProcessor2_0}


def test_attention_backend_switch():
    model = _tiny()
    with pytest.raises(ValueError):
        model.set_attention_backend("flash9")
    if importlib.util.find_spec("xformers") is None:
        with pytest.raises(RuntimeError, match="xformers"):
            model.set_attention_backend("xformers")
    else:
        model.set_attention_backend("xformers")
        assert model.attention_backend == "xformers"
        assert any(isinstance(p, XFormersReferenceAttnProcessor) for p in model.attn_processors.values())
    model.set_attention_backend("sdpa")
    assert model.attention_backend == "sdpa"


def test_xformers_reference_processor_layout(monkeypatch):
    """The xformers processor's reshapes and scale, checked against the SDPA one with a stand-in for
    ``xformers.ops.memory_efficient_attention`` ((B, L, H, D) layout) where xformers is not installed."""
    import sys
    import types

    if importlib.util.find_spec("xformers") is None:
        def memory_efficient_attention(q, k, v, op=None, scale=None):
            w = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q, k) * scale, dim=-1)
            return torch.einsum("bhlm,bmhd->blhd", w, v)

        ops = types.ModuleType("xformers.ops")
        ops.memory_efficient_attention = memory_efficient_attention
        package = types.ModuleType("xformers")
        package.ops = ops
        monkeypatch.setitem(sys.modules, "xformers", package)
        monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    x, bank = torch.randn(4, 10, 32), torch.randn(1, 7, 32)
    kv = (attn.to_k(bank), attn.to_v(bank))
    with torch.no_grad(), bind_reference_kv(attn, kv):
        attn.set_processor(XFormersReferenceAttnProcessor())
        got = attn(x)
        attn.set_processor(ReferenceAttnProcessor2_0())
        want = attn(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
