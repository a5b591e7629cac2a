"""Speed configurations of one method, named in the bench's method list: ``personalive[compile+graphs,tiny,bf16]``.

A configuration is a method name with ``[...]``: comma- or plus-separated settings, each one of

| setting | what it sets |
|---|---|
| ``eager`` | nothing compiled (the default) |
| ``compile`` | ``--compile`` (torch.compile of the step's networks) |
| ``graphs`` | ``--cuda-graphs`` (CUDA; implies the static-shape step) |
| ``static`` | the static-shape step without graphs (``--option static_shapes=true``) |
| ``full`` / ``tiny`` | ``--vae full`` / ``--vae tiny`` (TAESD) |
| ``fp32`` / ``fp16`` / ``bf16`` | ``--dtype`` |
| ``fused`` | ``--option fuse_qkv=true`` |
| ``nhwc`` | ``--option channels_last=true`` |

``personalive bench --speed --configs all`` measures the matrix a device can run: eager / compile /
compile + graphs (CUDA) × full VAE / TAESD × fp16 / bf16 (CUDA) or fp32 / bf16 (CPU), for every method
that takes ``--compile``; ``--configs eager,compile`` lists them by hand (each crossed with nothing else).
"""

from __future__ import annotations

import re

from personalive_cli import registry
from personalive_cli.errors import UserError

SETTINGS = {
    "eager": {},
    "compile": {"compile": True},
    "graphs": {"cuda_graphs": True},
    "static": {"static_shapes": "true"},
    "full": {"vae": "full"},
    "tiny": {"vae": "tiny"},
    "fused": {"fuse_qkv": True},
    "nhwc": {"channels_last": True},
}
DTYPES = {"fp32", "fp16", "bf16"}
_VARIANT = re.compile(r"^([^\[\]]+)\[([^\[\]]*)\]$")


def split(name: str) -> tuple[str, dict, str | None]:
    """``"personalive[compile,bf16]"`` -> ("personalive", {"compile": True}, "bf16"); a plain name -> (name, {}, None)."""
    m = _VARIANT.match(name.strip())
    if not m:
        registry.get(name)  # unknown names are refused here too
        return name, {}, None
    base, options, dtype = m.group(1), {}, None
    for token in filter(None, re.split(r"[,+ ]", m.group(2))):
        if token in DTYPES:
            dtype = token
        elif token in SETTINGS:
            options.update(SETTINGS[token])
        else:
            raise UserError(f"unknown setting {token!r} in {name!r}; known: {', '.join([*SETTINGS, *sorted(DTYPES)])}")
    cls = registry.get(base)
    flags = {"compile", "cuda_graphs", "vae"} & set(options)
    missing = sorted(f for f in flags if f not in cls.model_flags)
    if missing:
        raise UserError(f"method {base!r} has no --{missing[0].replace('_', '-')} option (in {name!r})")
    return base, options, dtype


def expand(methods: list[str], configs: str | None, device: str) -> list[str]:
    """The bench's method list with every configurable method crossed with ``configs`` (None: unchanged)."""
    if not configs:
        return methods
    if configs.strip() == "all":
        cuda = _is_cuda(device)
        compiled = ["eager", "compile", "compile+graphs"] if cuda else ["eager", "compile"]
        dtypes = ["fp16", "bf16"] if cuda else ["fp32", "bf16"]
        chosen = [f"{c},{v},{d}" for c in compiled for v in ("full", "tiny") for d in dtypes]
    else:
        chosen = [c.strip() for c in configs.split(";" if ";" in configs else ",") if c.strip()]
    out = []
    for name in methods:
        if "compile" in registry.get(name).model_flags:
            out += [f"{name}[{c}]" for c in chosen]
        else:
            out.append(name)
    for name in out:
        split(name)  # refuse unknown settings before any work
    return out


def _is_cuda(device: str) -> bool:
    from personalive_cli.devices import resolve_device

    return resolve_device(device).type == "cuda"
