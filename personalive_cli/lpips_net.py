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
from pathlib import Path

import torch

from personalive_cli.errors import UserError
from personalive_cli.pretrained_files import WeightFile, WeightsFileError

__all__ = ["build_lpips", "load_lpips_trunk"]

_TRUNK_NAMES = {"alex": "AlexNet", "vgg": "VGG16"}


def _trunk_key(lpips_key: str) -> str:
    # lpips keeps torchvision's layer indices: 'net.slice2.3.weight' <- 'features.3.weight' (AlexNet and VGG)
    _, idx, kind = lpips_key.split(".")
    return f"features.{idx}.{kind}"


def load_lpips_trunk(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy torchvision ``features.*`` weights into an ``lpips`` trunk (``slice1..slice5``).

    Strict: every trunk parameter must be filled with a matching shape, else ValueError.
    """
    model.net.load_state_dict(_trunk_from(model.net.state_dict(), state_dict), strict=True)


def _trunk_from(trunk_sd: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]) -> dict:
    new = {}
    for key, own in trunk_sd.items():
        src = _trunk_key(key)
        if src not in state_dict:
            raise ValueError(f"state dict lacks {src} (for lpips {key})")
        t = state_dict[src]
        if tuple(t.shape) != tuple(own.shape):
            raise ValueError(f"{src}: shape {tuple(t.shape)} != {tuple(own.shape)}")
        new[key] = torch.as_tensor(t)
    return new


def _random_trunk(trunk_sd: Mapping[str, torch.Tensor]) -> dict:
    """torchvision's init for the conv trunk: He-normal (fan-out) weights, zero biases."""
    return {k: torch.randn(v.shape) * (2.0 / (v.shape[0] * v[0, 0].numel())) ** 0.5 if v.ndim == 4
            else torch.zeros(v.shape) for k, v in trunk_sd.items()}


def build_lpips(net: str, trunk_file: str | os.PathLike | None, *, random_heads: bool = False,
                weight_file: WeightFile | None = None):
    """``lpips.LPIPS(net=net, version='0.1')`` in eval mode with frozen weights.

    Args:
        net: "alex" or "vgg".
        trunk_file: the torchvision file to read the trunk from; None makes the trunk random (tests only:
            a caller must ask for that explicitly).
        random_heads: random non-negative linear heads instead of the package's (tests only).
        weight_file: the file's `WeightFile`, whose label and download hint go into the error message.

    The network is built on the meta device and then filled completely (trunk, heads, input scaling) by
    one strict load: torchvision would otherwise initialise, then discard, VGG16's 120 M-parameter
    classifier (seconds of CPU time and half a gigabyte per build).

    Raises WeightsFileError when the file cannot be read or does not fit the trunk, and UserError when the
    ``lpips`` package is missing.
    """
    if net not in _TRUNK_NAMES:
        raise ValueError(f"net must be one of {sorted(_TRUNK_NAMES)}, got {net!r}")
    try:
        import lpips
    except ImportError as e:
        raise UserError("LPIPS needs the Python package 'lpips': pip install 'lpips>=0.1.4'") from e
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", UserWarning)  # torchvision: lpips still passes pretrained=False
        model = lpips.LPIPS(pretrained=False, net=net, version="0.1", pnet_rand=True, verbose=False)
    own = model.state_dict()
    trunk_own = {k[len("net."):]: v for k, v in own.items() if k.startswith("net.")}
    if trunk_file is None:
        trunk = _random_trunk(trunk_own)
    else:
        label = weight_file.label if weight_file is not None else "LPIPS"
        hint = f"; {weight_file.how}" if weight_file is not None else ""
        try:
            # (no mmap: torchvision's 2017 files use the legacy format, which cannot be memory-mapped)
            sd = torch.load(trunk_file, map_location="cpu", weights_only=True)
            if not isinstance(sd, Mapping):
                raise ValueError(f"not a state dict (a {type(sd).__name__})")
            trunk = _trunk_from(trunk_own, sd)
        except Exception as e:  # corrupt file, wrong network, not a state dict
            raise WeightsFileError(label, f"cannot use {trunk_file} as the {_TRUNK_NAMES[net]} trunk: "
                                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}{hint}",
                                   [trunk_file]) from e
    if random_heads:
        heads = {k: torch.rand(v.shape) / v.shape[1] for k, v in own.items() if k.startswith("lin")}
    else:
        # the heads calibrated on human judgements ship in the package: lin{k}.model.1.weight
        shipped = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth", map_location="cpu",
                             weights_only=True)
        heads = {k: shipped[k] for k in own if k.startswith("lin") and not k.startswith("lins.")}
        heads |= {k: shipped["lin{}.{}".format(*k[len("lins."):].split(".", 1))] for k in own
                  if k.startswith("lins.")}  # the same modules, also registered in the 'lins' list
    scaling = {f"scaling_layer.{k}": v for k, v in lpips.lpips.ScalingLayer().state_dict().items()}
    model = model.to_empty(device="cpu")
    model.load_state_dict({**{f"net.{k}": v for k, v in trunk.items()}, **heads, **scaling}, strict=True)
    return model.eval().requires_grad_(False)
