"""LivePortrait's SPADE generator G: the warped 256 x 64 x 64 feature -> a 3 x 512 x 512 image in [0, 1].

A 3x3 conv doubles the channels, six SPADE residual blocks at 64 x 64, two nearest x2 upsamplings each
followed by a SPADE residual block (to 128 and 256), LeakyReLU(0.2), a 3x3 conv to 12 channels, pixel
shuffle x2 and a sigmoid. Every SPADE layer is modulated by the generator's own input (resized with
nearest). The residual blocks' convolutions carry spectral normalisation, stored as the release does
(``weight_orig``, ``weight_u``, ``weight_v``); at inference the weight is weight_orig / sigma with
sigma = u . (W v) from the stored vectors (no power iteration). Released model: 55,365,388 parameters,
182 keys (``base_models/spade_generator.pth``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SPADEGeneratorConfig:
    upscale: int = 2
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    out_channels: int = 64
    hidden: int = 128  # SPADE's shared-MLP width (fixed in the release)
    num_middle_blocks: int = 6

    @classmethod
    def tiny(cls) -> SPADEGeneratorConfig:
        return cls(block_expansion=4, max_features=16, out_channels=8, hidden=8, num_middle_blocks=2)


class SpectralConv2d(nn.Conv2d):
    """A Conv2d whose effective weight is ``weight_orig / sigma`` with the stored singular vectors.

    State: ``bias`` (if any), ``weight_orig`` (parameter), ``weight_u`` (out,), ``weight_v`` (in*kh*kw,)
    (buffers), in the release's key order. :meth:`reset_singular_vectors` sets u, v by power iteration
    (for random weights; loaded ones keep the stored vectors).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        weight = self.weight
        del self.weight
        self.weight_orig = nn.Parameter(weight.data)
        out_ch = weight.shape[0]
        self.register_buffer("weight_u", F.normalize(torch.randn(out_ch, device=weight.device), dim=0, eps=1e-12)
                             if weight.device.type != "meta" else torch.empty(out_ch, device="meta"))
        self.register_buffer("weight_v", F.normalize(torch.randn(weight[0].numel(), device=weight.device), dim=0,
                                                     eps=1e-12)
                             if weight.device.type != "meta" else torch.empty(weight[0].numel(), device="meta"))

    @torch.no_grad()
    def reset_singular_vectors(self, iterations: int = 15) -> None:
        mat = self.weight_orig.reshape(self.weight_orig.shape[0], -1).float()
        u, v = self.weight_u.float(), self.weight_v.float()
        for _ in range(iterations):
            v = F.normalize(mat.t() @ u, dim=0, eps=1e-12)
            u = F.normalize(mat @ v, dim=0, eps=1e-12)
        self.weight_u.copy_(u)
        self.weight_v.copy_(v)

    def effective_weight(self) -> torch.Tensor:
        w = self.weight_orig
        sigma = torch.dot(self.weight_u.to(w.dtype), w.reshape(w.shape[0], -1) @ self.weight_v.to(w.dtype))
        return w / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class SPADE(nn.Module):
    """Instance norm (no affine) modulated by a segmentation-like map: norm(x) * (1 + gamma) + beta."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = F.instance_norm(x, eps=1e-5)
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int = 128) -> None:
        super().__init__()
        fmiddle = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.conv_0 = SpectralConv2d(fin, fmiddle, kernel_size=3, padding=1)
        self.conv_1 = SpectralConv2d(fmiddle, fout, kernel_size=3, padding=1)
        if self.learned_shortcut:
            self.conv_s = SpectralConv2d(fin, fout, kernel_size=1, bias=False)
        self.norm_0 = SPADE(fin, label_nc, hidden)
        self.norm_1 = SPADE(fmiddle, label_nc, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return shortcut + dx


class SPADEGenerator(nn.Module):
    """(n, C, 64, 64) warped feature -> (n, 3, 512, 512) in [0, 1]."""

    def __init__(self, config: SPADEGeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SPADEGeneratorConfig()
        label_nc = min(cfg.max_features, cfg.block_expansion * 2**cfg.num_down_blocks)
        self.in_channels = label_nc
        width = 2 * label_nc
        self.fc = nn.Conv2d(label_nc, width, kernel_size=3, padding=1)
        for i in range(cfg.num_middle_blocks):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(width, width, label_nc, cfg.hidden))
        self.up_0 = SPADEResnetBlock(width, label_nc, label_nc, cfg.hidden)
        self.up_1 = SPADEResnetBlock(label_nc, cfg.out_channels, label_nc, cfg.hidden)
        if cfg.upscale is None or cfg.upscale <= 1:
            self.conv_img = nn.Conv2d(cfg.out_channels, 3, kernel_size=3, padding=1)
        else:
            self.conv_img = nn.Sequential(nn.Conv2d(cfg.out_channels, 3 * 4, kernel_size=3, padding=1),
                                          nn.PixelShuffle(upscale_factor=2))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        seg = feature
        x = self.fc(feature)
        for i in range(self.config.num_middle_blocks):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(F.interpolate(x, scale_factor=2, mode="nearest"), seg)
        x = self.up_1(F.interpolate(x, scale_factor=2, mode="nearest"), seg)
        x = self.conv_img(F.leaky_relu(x, 0.2))
        return torch.sigmoid(x)

    def reset_singular_vectors(self) -> None:
        """Consistent spectral-norm vectors for freshly initialised (random) weights."""
        for m in self.modules():
            if isinstance(m, SpectralConv2d):
                m.reset_singular_vectors()
