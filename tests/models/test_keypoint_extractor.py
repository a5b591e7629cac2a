import json
from pathlib import Path

import pytest
import torch
from helpers import random_keypoint_info

from personalive_cli.models.keypoint_extractor import (
    KeypointExtractor,
    KeypointExtractorConfig,
    KeypointInfo,
    LayerNorm32,
    headpose_to_degrees,
    posed_keypoints,
    rotation_matrix,
)

MANIFEST = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "personalive_checkpoints.json"


def _manifest(name: str) -> dict:
    if not MANIFEST.is_file():
        pytest.skip(f"checkpoint manifest not found at {MANIFEST}")
    return json.loads(MANIFEST.read_text())["files"][name]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = KeypointExtractor(KeypointExtractorConfig.tiny()).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "grn" in name or "norm" in name:  # GRN starts at zero, norms at one: make them non-trivial
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


# ------------------------------------------------------------------------------------------------ network


def test_full_size_keys_and_shapes_match_checkpoint():
    expected = _manifest("motion_extractor.pth")
    with torch.device("meta"):
        model = KeypointExtractor()
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(expected) - set(got) == {"idx_tensor"}
    assert got == {k: v for k, v in expected.items() if k != "idx_tensor"}
    assert len(got) == 212
    assert sum(v.numel() for v in model.state_dict().values()) == 28_118_728


def test_loads_with_or_without_idx_tensor(tiny):
    sd = tiny.state_dict()
    other = KeypointExtractor(KeypointExtractorConfig.tiny())
    other.load_state_dict(sd, strict=True)  # LivePortrait layout
    other.load_state_dict({**sd, "idx_tensor": torch.arange(66, dtype=torch.float32)}, strict=True)  # PersonaLive
    with pytest.raises(RuntimeError, match="idx_tensor"):
        other.load_state_dict({**sd, "idx_tensor": torch.zeros(66)}, strict=True)
    with pytest.raises(RuntimeError):
        other.load_state_dict({**sd, "detector.bogus": torch.zeros(1)}, strict=True)


def test_forward_shapes_and_opt_in_exp(tiny):
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        info = tiny(images)
        with_exp = tiny(images, with_exp=True)
    assert info.kp.shape == (2, 21, 3)
    for angle in (info.pitch, info.yaw, info.roll):
        assert angle.shape == (2,)
        assert (angle.abs() <= 97.5).all()
    assert info.t.shape == (2, 3) and info.scale.shape == (2, 1)
    assert info.exp is None
    assert with_exp.exp.shape == (2, 21, 3)
    torch.testing.assert_close(with_exp.kp, info.kp)
    assert len(info) == 2 and len(info.select(1)) == 1
    torch.testing.assert_close(info.select(-1).kp, info.kp[1:])
    assert len(KeypointInfo.cat([info, info.select(0)])) == 3


def test_half_precision_keeps_convnext_layernorms_fp32(tiny):
    model = KeypointExtractor(KeypointExtractorConfig.tiny())
    model.load_state_dict(tiny.state_dict())
    model.half().eval()
    lns = [m for m in model.modules() if isinstance(m, LayerNorm32)]
    assert len(lns) == 4 + 4  # stem + 3 downsample + one block per stage
    assert all(m.weight.dtype == torch.float32 and m.bias.dtype == torch.float32 for m in lns)
    assert model.detector.norm.weight.dtype == torch.float16
    assert model.detector.fc_kp.weight.dtype == torch.float16
    ln = lns[0]
    x = torch.randn(1, 8, 4, 4, dtype=torch.float16)
    y = ln(x)
    assert y.dtype == torch.float16
    ref = torch.nn.functional.layer_norm(x.float().permute(0, 2, 3, 1), (8,), ln.weight, ln.bias, 1e-6)
    torch.testing.assert_close(y, ref.permute(0, 3, 1, 2).half())
    model.float()  # the fp32 copies come back unchanged
    torch.testing.assert_close(lns[1].weight, tiny.detector.downsample_layers[1][0].weight, rtol=0, atol=0)


def test_headpose_decoding():
    logits = torch.zeros(3, 66)
    logits[1, 10] = 1e4
    logits[2, 65] = 1e4
    deg = headpose_to_degrees(logits)
    torch.testing.assert_close(deg, torch.tensor([0.0, 3 * 10 - 97.5, 3 * 65 - 97.5]))


def _info(n=1, seed=0, dtype=torch.float64) -> KeypointInfo:
    return random_keypoint_info(n, seed, dtype)


def test_rotation_matrices_orthonormal():
    g = torch.Generator().manual_seed(0)
    p, y, r = (torch.rand(16, generator=g) * 180 - 90 for _ in range(3))
    rot = rotation_matrix(p, y, r)
    assert rot.shape == (16, 3, 3) and rot.dtype == torch.float32
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(16, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(16), atol=1e-6, rtol=0)
    torch.testing.assert_close(rotation_matrix(p[:, None], y[:, None], r[:, None]), rot)


def test_rotation_known_angles():
    z = torch.zeros(1)
    n = torch.full((1,), 90.0)
    rx = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    ry = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    rz = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    torch.testing.assert_close(rotation_matrix(n, z, z)[0], rx, atol=1e-6, rtol=0)
    torch.testing.assert_close(rotation_matrix(z, n, z)[0], ry, atol=1e-6, rtol=0)
    torch.testing.assert_close(rotation_matrix(z, z, n)[0], rz, atol=1e-6, rtol=0)
    # Composition order: R = Rz(roll) Ry(yaw) Rx(pitch).
    torch.testing.assert_close(rotation_matrix(n, n, n)[0], rz @ ry @ rx, atol=1e-6, rtol=0)
    torch.testing.assert_close(rotation_matrix(z, z, z)[0], torch.eye(3))


def test_posed_keypoints_formula():
    info = _info(2)
    got = posed_keypoints(info.kp, info.pitch, info.yaw, info.roll, info.t, info.scale)
    rot = rotation_matrix(info.pitch, info.yaw, info.roll).double()
    want = torch.einsum("nij,nkj->nki", rot, info.kp) * info.scale[:, :, None]
    want[..., :2] += info.t[:, None, :2]  # z translation is ignored
    torch.testing.assert_close(got, want)
    exp = torch.randn(2, 21, 3, dtype=torch.float64) * 0.01
    got_exp = posed_keypoints(info.kp, info.pitch, info.yaw, info.roll, info.t, info.scale, exp)
    torch.testing.assert_close(got_exp - got, exp * info.scale[:, :, None])
    torch.testing.assert_close(info.posed(), got)
