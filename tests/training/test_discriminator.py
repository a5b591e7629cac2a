import logging
import math

import pytest
import torch

from personalive_cli.errors import UserError
from personalive_cli.training.discriminator import (
    Discriminator,
    DiscriminatorConfig,
    _fir,
    _MinibatchStd,
    _resample_filter,
    load_discriminator,
)
from personalive_cli.training.losses import generator_adversarial

TINY = DiscriminatorConfig.tiny()


def _tiny(seed: int = 0) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(TINY)


def _images(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, TINY.resolution, TINY.resolution, generator=g) * 2 - 1


def _nvlabs_keys(res: int = 512, base: int = 32768, cmax: int = 512, temb: int = 512) -> dict[str, tuple]:
    """Key -> shape of NVlabs' resnet Discriminator (c_dim 0, mbstd 1 channel) + the timestep layers,
    written out from the published layout, independently of the module under test."""
    ch = {r: min(base // r, cmax) for r in [2 ** i for i in range(2, int(math.log2(res)) + 1)]}
    keys: dict[str, tuple] = {}
    for i, r in enumerate(2 ** k for k in range(int(math.log2(res)), 2, -1)):
        c_in, c_out = ch[r], ch[r // 2]
        keys[f"b{r}.resample_filter"] = (4, 4)
        if r == res:
            keys |= {f"b{r}.fromrgb.weight": (c_in, 3, 1, 1), f"b{r}.fromrgb.bias": (c_in,),
                     f"b{r}.fromrgb.resample_filter": (4, 4)}
        keys |= {f"b{r}.conv0.weight": (c_in, c_in, 3, 3), f"b{r}.conv0.bias": (c_in,),
                 f"b{r}.conv0.resample_filter": (4, 4),
                 f"b{r}.conv1.weight": (c_out, c_in, 3, 3), f"b{r}.conv1.bias": (c_out,),
                 f"b{r}.conv1.resample_filter": (4, 4),
                 f"b{r}.skip.weight": (c_out, c_in, 1, 1), f"b{r}.skip.resample_filter": (4, 4),
                 f"time_emb_proj.{i}.weight": (c_out, temb), f"time_emb_proj.{i}.bias": (c_out,)}
    c4 = ch[4]
    keys |= {"b4.conv.weight": (c4, c4 + 1, 3, 3), "b4.conv.bias": (c4,), "b4.conv.resample_filter": (4, 4),
             "b4.fc.weight": (c4, c4 * 16), "b4.fc.bias": (c4,), "b4.out.weight": (1, c4), "b4.out.bias": (1,),
             "time_embedding.linear_1.weight": (temb, temb), "time_embedding.linear_1.bias": (temb,),
             "time_embedding.linear_2.weight": (temb, temb), "time_embedding.linear_2.bias": (temb,)}
    return keys


def test_full_size_keys_widths_and_parameter_count_match_nvlabs_512():
    with torch.device("meta"):
        d = Discriminator()
    got = {k: tuple(v.shape) for k, v in d.state_dict().items()}
    assert got == _nvlabs_keys()
    blocks = sorted({k.split(".")[0] for k in got if k.startswith("b")}, key=lambda b: -int(b[1:]))
    assert blocks == ["b512", "b256", "b128", "b64", "b32", "b16", "b8", "b4"]
    widths = {r: got[f"b{r}.conv0.weight"][0] for r in (512, 256, 128, 64, 32, 16, 8)}
    assert widths == {512: 64, 256: 128, 128: 256, 64: 512, 32: 512, 16: 512, 8: 512}
    stylegan = sum(p.numel() for k, p in d.named_parameters() if not k.startswith("time_"))
    assert stylegan == 28_982_849  # NVlabs' ffhq512 D (c_dim 0); the official code gives the same count


def test_output_shapes_and_frames_with_per_frame_timesteps():
    d = _tiny().eval()
    x = _images(8)
    t = torch.arange(8) * 100
    with torch.no_grad():
        flat = d(x, t)
        assert flat.shape == (8,) and flat.dtype == torch.float32
        video = x.reshape(2, 4, 3, 64, 64).permute(0, 2, 1, 3, 4)  # (b, c, f, h, w)
        torch.testing.assert_close(d(video, t.reshape(2, 4)), flat.reshape(2, 4))
        per_sample = d(video, torch.tensor([5, 7]))
        torch.testing.assert_close(per_sample, d(x, torch.tensor([5] * 4 + [7] * 4)).reshape(2, 4))
        assert d(x[:4], 3).shape == (4,)
    with pytest.raises(ValueError, match="timesteps"):
        d(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="expects"):
        d(torch.zeros(4, 3, 32, 32), 0)
    with pytest.raises(ValueError, match="divisible by 4"):
        d(x[:6], 0)


def test_independent_of_t_at_init_then_the_projections_learn():
    d = _tiny()
    x = _images(4)
    t_a, t_b = torch.tensor([0, 333, 666, 999]), torch.tensor([999, 10, 500, 1])
    with torch.no_grad():
        assert torch.equal(d(x, t_a), d(x, t_b))
    opt = torch.optim.Adam(d.parameters(), lr=1e-3)
    generator_adversarial(d(x, t_a)).backward()
    for proj in d.time_emb_proj:
        assert proj.weight.grad.abs().sum() > 0 and proj.bias.grad.abs().sum() > 0
    # zero projections pass no gradient back to the embedding MLP on the first step
    assert all(p.grad is None or not p.grad.any() for p in d.time_embedding.parameters())
    before = [p.detach().clone() for p in d.time_emb_proj.parameters()]
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, d.time_emb_proj.parameters(), strict=True))
    with torch.no_grad():
        assert not torch.equal(d(x, t_a), d(x, t_b))


def test_gradient_checkpointing_gives_the_same_gradients():
    x = _images(4)
    grads = []
    for ckpt in (False, True):
        d = _tiny()
        if ckpt:
            d.enable_gradient_checkpointing()
        d(x, torch.tensor([1, 2, 3, 4])).sum().backward()
        grads.append(d.b64.conv0.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_resampling_filter_and_minibatch_std_by_hand():
    f = _resample_filter()
    torch.testing.assert_close(f, torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)
    # a constant image stays constant away from the zero-padded border, at half the size
    out = _fir(torch.full((1, 2, 8, 8), 3.0), f, pad=1, down=2)
    assert out.shape == (1, 2, 4, 4)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], torch.full((1, 2, 2, 2), 3.0))
    # group of 2 images with values 0 and 2: stddev 1 appended to both
    x = torch.tensor([0.0, 2.0]).reshape(2, 1, 1, 1)
    y = _MinibatchStd(group_size=4, num_channels=1)(x)
    torch.testing.assert_close(y[:, 1], torch.ones(2, 1, 1), atol=1e-6, rtol=0)


def test_save_pretrained_round_trip(tmp_path):
    d = _tiny()
    with torch.no_grad():
        for p in d.time_emb_proj.parameters():
            p.normal_()
    d.save_pretrained(tmp_path / "disc")
    back = Discriminator.from_pretrained(tmp_path / "disc")
    assert back.config.resolution == 64 and back.config.conv_clamp is None
    a, b = d.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x, t = _images(4), torch.tensor([0, 1, 2, 999])
    with torch.no_grad():
        assert torch.equal(d(x, t), back(x, t))
    # a Stage II checkpoint folder loads strictly through load_discriminator too
    again = load_discriminator(tmp_path / "disc", TINY, strict=True)
    assert all(torch.equal(a[k], again.state_dict()[k]) for k in a)
    with pytest.raises(UserError, match="has no diffusion_pytorch_model"):
        load_discriminator(tmp_path, TINY)


def test_non_strict_load_without_timestep_layers_reports_them(tmp_path, caplog):
    src = _tiny(seed=3)
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("time_")}
    sd["mapping.fc0.weight"] = torch.zeros(2, 2)  # a key our D does not have
    path = tmp_path / "stylegan2_discriminator.pth"
    torch.save(sd, path)
    with caplog.at_level(logging.INFO, logger="personalive_cli.training.discriminator"):
        d = load_discriminator(path, TINY)
    assert torch.equal(d.b64.conv0.weight, src.b64.conv0.weight)
    assert all(not p.any() for p in d.time_emb_proj.parameters())
    log = caplog.text
    assert "time_emb_proj.0" in log and "time_emb_proj.2" in log and "time_embedding.linear_2" in log
    assert "mapping.fc0" in log
    with pytest.raises(UserError, match="missing time_emb_proj"):
        load_discriminator(path, TINY, strict=True)


def test_shape_mismatch_and_bad_files_are_user_errors(tmp_path):
    path = tmp_path / "d.pth"
    torch.save(Discriminator(DiscriminatorConfig(resolution=64, channel_base=512, channel_max=16,
                                                 temb_channels=32)).state_dict(), path)
    expected = r"d\.pth do not fit.*time_emb_proj\.1\.weight \(16, 32\) in the file vs \(32, 32\)"
    with pytest.raises(UserError, match=expected) as e:
        load_discriminator(path, TINY)
    assert "\n" not in str(e.value)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(UserError, match="list.pth are not a state dict"):
        load_discriminator(tmp_path / "list.pth", TINY)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read discriminator weights .*junk.pth"):
        load_discriminator(tmp_path / "junk.pth", TINY)


def test_missing_file_message_and_random_init_without_path(tmp_path):
    with pytest.raises(UserError) as e:
        load_discriminator(tmp_path / "stylegan2_discriminator_ffhq512.pth", TINY)
    msg = str(e.value)
    assert str(tmp_path / "stylegan2_discriminator_ffhq512.pth") in msg
    assert "ffhq-res512-mirror-stylegan2-noaug.pkl" in msg and "non-commercial" in msg and "random" in msg
    assert "\n" not in msg
    d = load_discriminator(None, TINY)
    assert isinstance(d, Discriminator) and d.config.resolution == 64
