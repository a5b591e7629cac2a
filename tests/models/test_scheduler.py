"""StreamScheduler: the schedule's ᾱ, per-frame add_noise (diffusers' on folded frames) and the stream step."""

import pytest
import torch

from personalive_cli.models.scheduler import StreamScheduler


def test_alphas_are_scaled_linear_to_0_02():
    a = StreamScheduler().alphas_cumprod
    betas = torch.linspace(0.00085**0.5, 0.02**0.5, 1000, dtype=torch.float32) ** 2
    torch.testing.assert_close(a, torch.cumprod(1 - betas, dim=0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_noise_per_frame_equals_closed_form(dtype):
    sched = StreamScheduler()
    g = torch.Generator().manual_seed(0)
    x0, noise = (torch.randn(2, 4, 3, 5, 6, generator=g).to(dtype) for _ in range(2))
    t = torch.tensor([0, 333, 999])
    got = sched.add_noise(x0, noise, t)
    assert got.shape == x0.shape and got.dtype == dtype
    for i in range(3):
        a = sched.alphas_cumprod[t[i]].to(dtype)  # cast before the square roots, as the official code
        assert torch.equal(got[:, :, i], a.sqrt() * x0[:, :, i] + (1 - a).sqrt() * noise[:, :, i])
    with pytest.raises(ValueError):
        sched.add_noise(x0, noise, t[:2])


def test_step_is_ddim_with_fixed_step_length():
    sched = StreamScheduler()
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(1, 4, 4, 2, 2, generator=g), torch.randn(1, 4, 4, 2, 2, generator=g)
    t = torch.tensor([0, 333, 666, 999])
    prev, x0 = sched.step(eps, t, x)
    a = sched.alphas_cumprod
    for i, ti in enumerate(t.tolist()):
        a_prev = a[ti - 333] if ti >= 333 else torch.tensor(1.0)
        want_x0 = (x[:, :, i] - (1 - a[ti]).sqrt() * eps[:, :, i]) / a[ti].sqrt()
        torch.testing.assert_close(x0[:, :, i], want_x0)
        torch.testing.assert_close(prev[:, :, i], a_prev.sqrt() * want_x0 + (1 - a_prev).sqrt() * eps[:, :, i])
    torch.testing.assert_close(prev[:, :, 0], x0[:, :, 0])  # t = 0 comes out clean
