"""pytorch-fid's FID InceptionV3 up to pool3, built from a state dict read from a local file.

pytorch-fid's ``InceptionV3(use_fid_inception=True)`` fetches its weights by URL inside its constructor
(``fid_inception_v3``) and takes no local file. So the same network is put together here from its
parts: torchvision's ``Inception3`` (1008 classes, no aux head) with pytorch-fid's FID blocks in
place, the state dict loaded strictly (a file of another layout fails loudly), and pytorch-fid's
forward for pool3: bilinear resize to 299², [0, 1] -> [-1, 1], the layers up to the average pool.
test_metrics_fvd_fid.py checks the output against pytorch-fid's own class on the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The layers pytorch-fid swaps for its FID variants: name -> (class in pytorch_fid.inception, its args).
FID_BLOCKS = {
    "Mixed_5b": ("FIDInceptionA", (192, 32)),
    "Mixed_5c": ("FIDInceptionA", (256, 64)),
    "Mixed_5d": ("FIDInceptionA", (288, 64)),
    "Mixed_6b": ("FIDInceptionC", (768, 128)),
    "Mixed_6c": ("FIDInceptionC", (768, 160)),
    "Mixed_6d": ("FIDInceptionC", (768, 160)),
    "Mixed_6e": ("FIDInceptionC", (768, 192)),
    "Mixed_7b": ("FIDInceptionE_1", (1280,)),
    "Mixed_7c": ("FIDInceptionE_2", (2048,)),
}

# Input to pool3 in order; torchvision's maxpool1/maxpool2 (3×3, stride 2) and avgpool (to 1×1) are
# the pools pytorch-fid puts between its blocks.
POOL3_LAYERS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
    "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool",
)


class FIDInceptionPool3(nn.Module):
    """float (b, 3, h, w) in [0, 1] -> ``[pool3 (b, 2048, 1, 1)]`` (a list, as pytorch-fid's InceptionV3)."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        super().__init__()
        import torchvision
        from pytorch_fid import inception as fid_inception

        net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False,
                                              init_weights=False)
        for name, (cls, args) in FID_BLOCKS.items():
            setattr(net, name, getattr(fid_inception, cls)(*args))
        net.load_state_dict(state_dict)
        self.layers = nn.Sequential(*(getattr(net, name) for name in POOL3_LAYERS))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return [self.layers(2 * x - 1)]
