import math

import pytest
import torch

from personalive_cli.errors import UserError
from personalive_cli.training.losses import (
    LPIPSLoss,
    discriminator_loss,
    generator_adversarial,
    masked_mse,
    r1_penalty,
    region_weights,
)


def _sp(v: float) -> float:
    return math.log1p(math.exp(v))


def test_adversarial_losses_on_hand_made_logits():
    g = generator_adversarial(torch.tensor([0.0, 2.0, -2.0]))
    assert g.item() == pytest.approx((_sp(0) + _sp(-2) + _sp(2)) / 3, rel=1e-6)
    d = discriminator_loss(real_logits=torch.tensor([3.0, 1.0]), fake_logits=torch.tensor([-1.0]))
    assert d.item() == pytest.approx(_sp(-1) + (_sp(-3) + _sp(-1)) / 2, rel=1e-6)
    # a confident, correct discriminator has a small loss; a fooled one a large loss
    assert discriminator_loss(torch.tensor([9.0]), torch.tensor([-9.0])) < 1e-3
    assert discriminator_loss(torch.tensor([-9.0]), torch.tensor([9.0])) > 17


def test_r1_penalty_by_hand():
    w = torch.randn(3, 4, 4)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    # linear critic: the gradient is w for every image
    assert r1_penalty(x, (x * w).flatten(1).sum(1)).item() == pytest.approx(w.square().sum().item(), rel=1e-5)
    # quadratic critic sum(w x^2): gradient 2 w x, and the penalty itself can be backpropagated
    r1 = r1_penalty(x, (w * x.square()).flatten(1).sum(1))
    expected = (2 * w * x).square().flatten(1).sum(1).mean()
    assert r1.item() == pytest.approx(expected.item(), rel=1e-5)
    r1.backward()
    torch.testing.assert_close(x.grad, (8 * w.square() * x / 2).detach())
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(torch.zeros(1, 3, 4, 4), torch.zeros(1))


def test_region_weights_and_masked_mse():
    face = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    eyes = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    m = region_weights(face, eyes)
    assert torch.equal(m, torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
    pred, target = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    # weight on the difference, mean over all 12 elements: (0 + 1 + 4 + 1) * 3 / 12
    assert masked_mse(pred, target, m[None, None]).item() == pytest.approx(1.5)
    assert masked_mse(pred, target, m[None]).item() == pytest.approx(1.5)  # (n, h, w) mask
    assert masked_mse(pred, target, torch.zeros(1, 1, 2, 2)).item() == 0.0
    video = torch.ones(1, 3, 5, 2, 2)
    assert masked_mse(video, torch.zeros_like(video), m.expand(1, 1, 5, 2, 2)).item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="broadcast"):
        masked_mse(pred, target, torch.ones(1, 1, 3, 3))


@pytest.fixture(scope="module")
def lpips_random():
    return LPIPSLoss.random_for_tests()


def test_lpips_zero_for_identical_positive_otherwise(lpips_random):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(2, 3, 32, 32, generator=g)).clamp(-1, 1)
    assert lpips_random(a, a).item() == 0.0
    pred = b.clone().requires_grad_(True)
    loss = lpips_random(pred, a)
    assert loss.item() > 0
    loss.backward()
    assert pred.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips_random.parameters())
    lpips_random.train()
    assert not lpips_random.net.training  # the heads' dropout stays off
    # (b, c, f, h, w) clips are compared frame by frame
    clip_a, clip_b = a.reshape(1, 2, 3, 32, 32).transpose(1, 2), b.reshape(1, 2, 3, 32, 32).transpose(1, 2)
    torch.testing.assert_close(lpips_random(clip_b, clip_a), lpips_random(b, a))


def test_lpips_reads_the_vgg_trunk_from_a_local_file(tmp_path, lpips_random):
    trunk = {f"features.{k.split('.', 2)[1]}.{k.split('.', 2)[2]}": torch.randn(v.shape).half()
             for k, v in lpips_random.net.net.state_dict().items()}
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(trunk, path)
    loss = LPIPSLoss(vgg_weights=path)
    torch.testing.assert_close(loss.net.net.slice1[0].weight, trunk["features.0.weight"].float())
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match="wrong.pth") as e:
        LPIPSLoss(vgg_weights=tmp_path / "wrong.pth")
    assert "\n" not in str(e.value)


def test_lpips_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError) as e:
        LPIPSLoss()
    msg = str(e.value)
    assert "vgg16-397923af.pth" in msg and "https://download.pytorch.org/models/vgg16-397923af.pth" in msg
    assert "\n" not in msg
    with pytest.raises(UserError, match="nope.pth not found"):
        LPIPSLoss(vgg_weights=tmp_path / "nope.pth")
