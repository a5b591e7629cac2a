import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from personalive_cli.models.motion_encoder import (
    MotionEncoder,
    MotionEncoderConfig,
    PatchSelfAttention,
    sincos_embedding_1d,
    sincos_embedding_2d,
)

MANIFEST = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "personalive_checkpoints.json"


def _manifest(name: str) -> dict:
    if not MANIFEST.is_file():
        pytest.skip(f"checkpoint manifest not found at {MANIFEST}")
    return json.loads(MANIFEST.read_text())["files"][name]


@pytest.fixture(scope="module")
def meta_model():
    with torch.device("meta"):
        return MotionEncoder()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = MotionEncoder(MotionEncoderConfig.tiny()).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial weights everywhere, including the zero-initialised proj_outs
        for name, p in model.named_parameters():
            if "proj_out" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def test_full_size_keys_and_shapes_match_checkpoint(meta_model):
    expected = _manifest("motion_encoder.pth")
    got = {k: list(v.shape) for k, v in meta_model.state_dict().items()}
    assert len(got) == 403
    assert got == expected
    assert not any("pos_embed.pos_embed" in k for k in got)


def test_full_size_element_count(meta_model):
    assert sum(v.numel() for v in meta_model.state_dict().values()) == 61_643_889


def test_pe_table_values():
    model = MotionEncoder(MotionEncoderConfig.tiny())
    pe = model.pe[0]
    assert pe.shape == (32, 16) and pe.dtype == torch.float32
    for m in (0, 1, 7, 31):
        for k in range(8):
            w = 10000.0 ** (-k / 8)
            assert pe[m, k].item() == pytest.approx(math.sin(m * w), abs=1e-6)
            assert pe[m, 8 + k].item() == pytest.approx(math.cos(m * w), abs=1e-6)


def test_2d_table_layout():
    table = sincos_embedding_2d(16, 4, 4)  # row-major tokens of a 4x4 grid
    assert table.shape == (16, 16)
    grid = table.reshape(4, 4, 16)
    idx = sincos_embedding_1d(8, torch.arange(4)).float()
    for h in range(4):
        for w in range(4):
            torch.testing.assert_close(grid[h, w, :8], idx[w])  # first half: column
            torch.testing.assert_close(grid[h, w, 8:], idx[h])  # second half: row


def test_2d_table_matches_diffusers():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    try:
        ref = get_2d_sincos_pos_embed(1024, 28, base_size=28, output_type="pt")
    except TypeError:  # older diffusers return numpy without output_type
        ref = torch.from_numpy(get_2d_sincos_pos_embed(1024, 28, base_size=28))
    torch.testing.assert_close(sincos_embedding_2d(1024, 28, 28).double(), ref.double(), rtol=0, atol=1e-6)


def test_tiny_forward_shapes(tiny):
    faces = torch.rand(1, 3, 2, 224, 224) * 2 - 1
    with torch.no_grad():
        out = tiny(faces)
        flat = tiny(faces[0].permute(1, 0, 2, 3))  # (2, 3, 224, 224)
    assert out.shape == (1, 2, 32, 16)
    assert flat.shape == (2, 32, 16)
    torch.testing.assert_close(out[0], flat, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out).all()


def test_frames_are_independent(tiny):
    faces = torch.rand(1, 3, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        all_frames = tiny(faces)
        one = tiny(faces[:, :, 1:2])
    torch.testing.assert_close(all_frames[:, 1:2], one, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(all_frames[:, 0], all_frames[:, 1])


def test_pe_is_added_to_the_output(tiny):
    faces = torch.rand(1, 3, 1, 224, 224)
    with torch.no_grad():
        out = tiny(faces)
        raw = tiny.final_proj(tiny.model(faces[:, :, 0])).reshape(1, 1, 32, 16)
    torch.testing.assert_close(out, raw + tiny.pe[:, None], rtol=0, atol=1e-6)


def test_wrong_crop_size_rejected(tiny):
    with pytest.raises(ValueError):
        tiny(torch.zeros(1, 3, 1, 112, 112))


def test_invalid_config_rejected():
    with pytest.raises(ValueError):
        MotionEncoder(MotionEncoderConfig.tiny(image_size=100))


def test_zero_initialised_attention_is_identity():
    att = PatchSelfAttention(8, 16, 4, heads=2, head_dim=8, groups=4, zero_init_out=True).eval()
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(att(x), x)


class _FixedTokens(nn.Module):
    def __init__(self, tokens: torch.Tensor) -> None:
        super().__init__()
        self.tokens = tokens

    def forward(self, x):
        return self.tokens


def test_unpatchify_order():
    # Token (h, w) holds features ordered (p, q, c) with c fastest; sub-pixel (p, q) -> pixel (h*P+p, w*P+q).
    c, p, g = 3, 2, 4  # channels, patch, grid -> 8x8 map, inner width 12 = p*p*c
    att = PatchSelfAttention(c, g * p, p, heads=1, head_dim=p * p * c, groups=1, zero_init_out=False).eval()
    target = torch.randn(1, c, g * p, g * p)
    tokens = torch.empty(1, g * g, p * p * c)
    for h in range(g):
        for w in range(g):
            for pp in range(p):
                for q in range(p):
                    for ch in range(c):
                        tokens[0, h * g + w, (pp * p + q) * c + ch] = target[0, ch, h * p + pp, w * p + q]
    att.pos_embed = _FixedTokens(tokens)
    att.transformer_blocks = nn.ModuleList()
    with torch.no_grad():
        att.proj_out.weight.copy_(torch.eye(c))
        att.proj_out.bias.zero_()
        x = torch.randn(1, c, g * p, g * p)
        torch.testing.assert_close(att(x) - x, target, rtol=0, atol=1e-6)


def test_state_dict_round_trip_and_dtype_cast(tiny):
    other = MotionEncoder(MotionEncoderConfig.tiny())
    other.load_state_dict(tiny.state_dict(), strict=True)
    other.eval()
    faces = torch.rand(1, 3, 1, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(other(faces), tiny(faces))
        assert other(faces).dtype == torch.float32
