"""Device and dtype choice: ``auto`` picks cuda, then mps, then cpu."""

from __future__ import annotations

from typing import TYPE_CHECKING

from personalive_cli.errors import UserError

if TYPE_CHECKING:
    import torch

# torch is imported where a device is really resolved: importing it costs seconds at every CLI start,
# which a method that runs no torch code (``still``) need not pay.

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve(device: str, dtype: str, uses_torch: bool = True) -> tuple[torch.device | str, torch.dtype | None]:
    """``--device`` and ``--dtype`` for a method: ``(device, dtype)``. For a method that runs no torch
    code, the choices that need no checking against the hardware (``auto``/``cpu`` with ``auto``/``fp32``)
    give ``("cpu", None)`` without importing torch; every other choice is resolved (and refused where
    wrong) exactly as for any method."""
    if not uses_torch and device in ("auto", "cpu") and dtype in ("auto", "fp32"):
        return "cpu", None
    torch_device = resolve_device(device)
    return torch_device, resolve_dtype(dtype, torch_device)


def resolve_device(name: str) -> torch.device:
    import torch

    if name not in DEVICES and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for, but CUDA is not available on this machine")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps was asked for, but MPS is not available on this machine")
    try:
        device = torch.device(name)
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    except RuntimeError as exc:
        raise UserError(f"bad --device {name!r}: {exc}") from None
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: fp16 on CUDA, fp32 elsewhere. fp16 and bf16 are accepted everywhere: CPUs with AVX-512
    BF16 / AMX run bf16 matrix products natively (benchmarks/README.md has what they gave here)."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in table:
        raise UserError(f"unknown dtype {name!r}; choose one of auto, {', '.join(table)}")
    return table[name]
