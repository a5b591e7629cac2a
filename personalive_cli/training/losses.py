"""Stage II/III losses (training.md §6-7): pixel and face-region MSE, LPIPS-VGG, and the non-saturating
logistic GAN losses of the timestep-conditioned discriminator.

The official generator loss per graded pass is ``mse + masked_mse + 2 * lpips + 0.05 * adversarial``;
the discriminator's is `discriminator_loss`, without R1 (the official code has it commented out; it is
here for experiments, off unless a trainer calls it).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from personalive_cli.lpips_net import build_lpips
from personalive_cli.pretrained_files import VGG16

__all__ = ["LPIPSLoss", "discriminator_loss", "generator_adversarial", "masked_mse", "r1_penalty",
           "region_weights"]


def generator_adversarial(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: mean softplus(-D(fake)) = -log sigmoid(D(fake))."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Logistic discriminator loss: mean softplus(D(fake)) + mean softplus(-D(real)).

    (The fake logits must come from detached generator outputs; that is the caller's business.)
    """
    return F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()


def r1_penalty(real_images: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): mean over images of |dD(x)/dx|², on real images.

    ``real_images`` must require grad and ``real_logits`` be computed from them; the graph is kept so the
    penalty can be backpropagated (scale it by gamma/2 yourself).
    """
    if not real_images.requires_grad:
        raise ValueError("r1_penalty needs real_images.requires_grad_(True) before computing real_logits")
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()


def region_weights(face_mask: torch.Tensor, eye_mouth_mask: torch.Tensor) -> torch.Tensor:
    """The official face-region weight map: face mask + eye/mouth mask, so background 0, face 1 and eyes or
    mouth 2 (the eye/mouth regions lie inside the face). Masks in {0, 1}, any matching shape."""
    return face_mask.float() + eye_mouth_mask.float()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight_mask: torch.Tensor) -> torch.Tensor:
    """MSE(M ⊙ pred, M ⊙ target), mean over every element, as the official face-region term.

    pred, target: (n, c, h, w) (or (n, c, f, h, w)); weight_mask: (n, 1, h, w) / (n, h, w) (or with f),
    broadcast over the channels. The weight multiplies the difference, so a region of weight 2 counts
    4x in the loss, and the mean runs over all pixels (background included), not over the masked ones.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    m = weight_mask.float()
    if m.ndim == pred.ndim - 1:
        m = m.unsqueeze(1)  # (n, h, w) -> (n, 1, h, w): the channel axis
    if m.ndim != pred.ndim or m.shape[0] != pred.shape[0] or m.shape[2:] != pred.shape[2:] or m.shape[1] not in (
            1, pred.shape[1]):
        raise ValueError(f"weight mask {tuple(weight_mask.shape)} does not broadcast to {tuple(pred.shape)}")
    return F.mse_loss(pred.float() * m, target.float() * m)


class LPIPSLoss(nn.Module):
    """LPIPS-VGG (v0.1) between images in [-1, 1]: ``loss(pred, target) -> scalar`` (mean over images).

    The linear heads ship with the ``lpips`` package; the VGG16 trunk is torchvision's
    ``vgg16-397923af.pth``, read from ``vgg_weights`` or from torch hub's cache (never downloaded). All its
    weights are frozen and it always runs in eval mode (no dropout); gradients flow to ``pred``.

    Args:
        vgg_weights: path of ``vgg16-397923af.pth``; None looks in torch hub's cache.
        pretrained: False builds a random VGG trunk without any file. For tests only; use
            `random_for_tests` so it reads as such.
    """

    def __init__(self, vgg_weights: str | os.PathLike | None = None, *, pretrained: bool = True) -> None:
        super().__init__()
        path = VGG16.resolve(vgg_weights) if pretrained else None
        self.net = build_lpips("vgg", path, weight_file=VGG16)

    @classmethod
    def random_for_tests(cls, seed: int = 0) -> LPIPSLoss:
        """A random-trunk LPIPS (the package's real heads): same code path, meaningless values. The trunk is
        drawn from ``seed`` without touching the global RNG, so every build is the same network (a run that
        uses it, e.g. ``lpips_vgg: random``, is reproducible and resumes exactly)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(pretrained=False)

    def train(self, mode: bool = True) -> LPIPSLoss:
        super().train(mode)
        self.net.eval()  # a frozen metric: its heads' dropout must stay off
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: (n, 3, h, w) in [-1, 1] (5-D (b, 3, f, h, w) is flattened to frames)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if pred.ndim == 5:
            pred, target = (x.transpose(1, 2).flatten(0, 1) for x in (pred, target))
        return self.net(pred.float(), target.float()).mean()
