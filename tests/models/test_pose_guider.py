import json
from pathlib import Path

import pytest
import torch

from personalive_cli.models.pose_guider import PoseGuider, PoseGuiderConfig

MANIFEST = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "personalive_checkpoints.json"


def _manifest(name: str) -> dict:
    if not MANIFEST.is_file():
        pytest.skip(f"checkpoint manifest not found at {MANIFEST}")
    return json.loads(MANIFEST.read_text())["files"][name]


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_full_size_keys_and_shapes_match_checkpoint():
    expected = _manifest("pose_guider.pth")
    with torch.device("meta"):
        model = PoseGuider()
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == expected


def test_full_size_parameter_count():
    with torch.device("meta"):
        model = PoseGuider()
    assert sum(p.numel() for p in model.parameters()) == 1_086_480
    assert model.downsample_factor == 8


def test_tiny_forward_shapes_and_zero_init():
    model = PoseGuider(PoseGuiderConfig.tiny(out_channels=32)).eval()
    canvas = torch.rand(2, 3, 3, 64, 48)
    out = model(canvas)
    assert out.shape == (2, 32, 3, 8, 6)
    # The output conv starts at zero, like the released model's training init.
    assert torch.count_nonzero(out) == 0
    assert model(torch.rand(5, 3, 64, 64)).shape == (5, 32, 8, 8)


def test_frames_are_independent_and_layout_is_b_c_f_h_w():
    model = PoseGuider(PoseGuiderConfig.tiny()).eval()
    _randomise(model)
    canvas = torch.rand(2, 3, 4, 32, 32)
    with torch.no_grad():
        out = model(canvas)
        frame = model(canvas[1:2, :, 2])  # frame 2 of sample 1 alone, as a 4-D batch (1, 3, 32, 32)
    torch.testing.assert_close(out[1:2, :, 2], frame, rtol=1e-5, atol=1e-6)
    assert out.abs().sum() > 0


def test_input_cast_to_weight_dtype_and_bad_rank():
    model = PoseGuider(PoseGuiderConfig.tiny()).eval()
    out = model(torch.rand(1, 3, 1, 16, 16, dtype=torch.float64))
    assert out.dtype == torch.float32
    with pytest.raises(ValueError):
        model(torch.rand(3, 16, 16))


def test_custom_widths():
    cfg = PoseGuiderConfig(block_out_channels=(4, 8), out_channels=6, zero_init_out=False)
    model = PoseGuider(cfg)
    assert model.downsample_factor == 2
    assert model(torch.rand(1, 3, 1, 10, 10)).shape == (1, 6, 1, 5, 5)
