"""The ``lpips`` package's network with its torchvision trunk read from a local file (never downloaded).

``lpips.LPIPS`` ships its linear heads (``lpips/weights/v0.1/{alex,vgg}.pth``) inside the pip package but
asks torchvision to download the ImageNet trunk. Here the trunk is built random (``pnet_rand=True``) and
then filled from a local torchvision file (``features.*`` keys). Used by the benchmarks' LPIPS metric
(AlexNet) and by the training loss (VGG16).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import torch

from personalive_cli.errors import UserError
from personalive_cli.pretrained_files import WeightFile, WeightsFileError

__all__ = ["build_lpips", "load_lpips_trunk"]

_TRUNK_NAMES = {"alex": "AlexNet", "vgg": "VGG16"}


def load_lpips_trunk(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy torchvision ``features.*`` weights into an ``lpips`` trunk (``slice1..slice5``).

    lpips keeps torchvision's layer indices ('slice2.3.weight' <- 'features.3.weight'), for AlexNet and
    VGG alike. Strict: every trunk parameter must be filled with a matching shape, else ValueError.
    """
    trunk_sd = model.net.state_dict()
    new = {}
    for key in trunk_sd:
        _, idx, kind = key.split(".")
        src = f"features.{idx}.{kind}"
        if src not in state_dict:
            raise ValueError(f"state dict lacks {src} (for lpips {key})")
        t = state_dict[src]
        if tuple(t.shape) != tuple(trunk_sd[key].shape):
            raise ValueError(f"{src}: shape {tuple(t.shape)} != {tuple(trunk_sd[key].shape)}")
        new[key] = torch.as_tensor(t)
    model.net.load_state_dict(new, strict=True)


def build_lpips(net: str, trunk_file: str | os.PathLike | None, *, random_heads: bool = False,
                weight_file: WeightFile | None = None):
    """``lpips.LPIPS(net=net, version='0.1')`` in eval mode with frozen weights.

    Args:
        net: "alex" or "vgg".
        trunk_file: the torchvision file to read the trunk from; None leaves the trunk random (tests only:
            a caller must ask for that explicitly).
        random_heads: also leave the linear heads random (tests only).
        weight_file: the file's `WeightFile`, whose label and download hint go into the error message.

    Raises WeightsFileError when the file cannot be read or does not fit the trunk, and UserError when the
    ``lpips`` package is missing.
    """
    if net not in _TRUNK_NAMES:
        raise ValueError(f"net must be one of {sorted(_TRUNK_NAMES)}, got {net!r}")
    try:
        import lpips
    except ImportError as e:
        raise UserError("LPIPS needs the Python package 'lpips': pip install 'lpips>=0.1.4'") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision: lpips still passes pretrained=False
        model = lpips.LPIPS(pretrained=not random_heads, net=net, version="0.1", pnet_rand=True, verbose=False)
    if trunk_file is not None:
        label = weight_file.label if weight_file is not None else "LPIPS"
        hint = f"; {weight_file.how}" if weight_file is not None else ""
        try:
            # (no mmap: torchvision's 2017 files use the legacy format, which cannot be memory-mapped)
            sd = torch.load(trunk_file, map_location="cpu", weights_only=True)
            if not isinstance(sd, Mapping):
                raise ValueError(f"not a state dict (a {type(sd).__name__})")
            load_lpips_trunk(model, sd)
        except Exception as e:  # corrupt file, wrong network, not a state dict
            raise WeightsFileError(label, f"cannot use {trunk_file} as the {_TRUNK_NAMES[net]} trunk: "
                                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}{hint}",
                                   [trunk_file]) from e
    return model.eval().requires_grad_(False)
