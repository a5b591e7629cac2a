"""Motion and temporal modules: the naive formulas, and the temporal position table."""

from __future__ import annotations

import torch

from personalive_cli.models.denoising_unet import DenoisingUNet, DenoisingUNetConfig
from personalive_cli.models.motion_modules import PositionalEncoding


def _tiny(seed: int = 0) -> DenoisingUNet:
    torch.manual_seed(seed)
    return DenoisingUNet(DenoisingUNetConfig.tiny()).eval()


def test_pe_buffers_optional_on_load():
    model = _tiny()
    sd = model.state_dict()
    without = {k: v for k, v in sd.items() if not k.endswith("pos_encoder.pe")}
    assert len(without) < len(sd)
    fresh = _tiny(seed=5)
    fresh.load_state_dict(without, strict=True)  # no missing-key error
    fresh.load_state_dict(sd, strict=True)
    # built on meta and assigned from a file without pe: the table is regenerated, not left on meta
    with torch.device("meta"):
        meta = DenoisingUNet(DenoisingUNetConfig.tiny())
    meta.load_state_dict(without, strict=True, assign=True)
    pes = [m for m in meta.modules() if isinstance(m, PositionalEncoding)]
    assert pes and all(m.pe.device.type == "cpu" for m in pes)
    assert torch.equal(pes[0].pe, PositionalEncoding.table(pes[0].dim, 32))
    # interleaved sin/cos: pe[p, 2i] = sin(p w_i), pe[p, 2i+1] = cos(p w_i), w_i = 10000^(-2i/C)
    tab = PositionalEncoding.table(8, 32)[0]
    assert torch.allclose(tab[3, 2], torch.sin(torch.tensor(3 * 10000 ** (-2 / 8))))
    assert torch.allclose(tab[3, 3], torch.cos(torch.tensor(3 * 10000 ** (-2 / 8))))


def _naive_mha(q, k, v, heads):
    n, lq, c = q.shape
    d = c // heads
    q = q.view(n, lq, heads, d).transpose(1, 2)
    k = k.view(n, -1, heads, d).transpose(1, 2)
    v = v.view(n, -1, heads, d).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)
    return (w @ v).transpose(1, 2).reshape(n, lq, c)


def test_temporal_module_matches_naive_formula():
    model = _tiny()
    mod = model.down_blocks[1].temporal_modules[0]
    f, c, h, w = 5, 64, 3, 2
    x = torch.randn(f, c, h, w)  # b = 1, frames folded
    tt = mod.temporal_transformer
    with torch.no_grad():
        got = mod(x, num_frames=f)
        t = tt.proj_in(tt.norm(x).permute(0, 2, 3, 1).reshape(f, h * w, c))  # (f, hw, c)
        blk = tt.transformer_blocks[0]
        for attn, norm in zip(blk.attention_blocks, blk.norms, strict=True):
            s = norm(t).transpose(0, 1) + attn.pos_encoder.pe[0, :f]  # (hw, f, c), PE after LN
            o = _naive_mha(attn.to_q(s), attn.to_k(s), attn.to_v(s), attn.heads)
            t = attn.to_out[0](o).transpose(0, 1) + t
        t = blk.ff(blk.ff_norm(t)) + t
        expect = tt.proj_out(t).reshape(f, h, w, c).permute(0, 3, 1, 2) + x
    assert torch.allclose(got, expect, atol=1e-5)


def test_motion_module_matches_naive_formula():
    model = _tiny()
    mod = model.up_blocks[3].motion_modules[2]
    f, c, h, w = 3, 32, 4, 4
    x = torch.randn(f, c, h, w)
    tokens = torch.randn(f, 32, 16)
    tt = mod.temporal_transformer
    with torch.no_grad():
        got = mod(x, tokens)
        t = tt.proj_in(tt.norm(x).permute(0, 2, 3, 1).reshape(f, h * w, c))
        blk = tt.transformer_blocks[0]
        for attn, norm in zip(blk.attention_blocks, blk.norms, strict=True):
            o = _naive_mha(attn.to_q(norm(t)), attn.to_k(tokens), attn.to_v(tokens), attn.heads)
            t = attn.to_out[0](o) + t
        t = blk.ff(blk.ff_norm(t)) + t
        expect = tt.proj_out(t).reshape(f, h, w, c).permute(0, 3, 1, 2) + x
    assert torch.allclose(got, expect, atol=1e-5)
