"""Optional extras: which importable modules each ``pip install 'personalive[EXTRA]'`` provides, and one
check that names the missing extra with its install command before a command starts any work."""

from __future__ import annotations

import importlib.util

from personalive_cli.errors import UserError

# extra -> the modules its packages provide (import names, not distribution names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "faces": ("mediapipe",),
    "bench": ("lpips", "pytorch_fid", "scipy", "matplotlib", "accelerate", "onnxruntime", "insightface", "psutil"),
    "train": ("accelerate", "albumentations", "cv2", "tensorboard", "mediapipe", "lpips"),
}


def missing_modules(extra: str) -> list[str]:
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require_extra(extra: str, command: str, modules: tuple[str, ...] | None = None) -> None:
    """A :class:`UserError` naming ``extra`` and how to install it when any of its modules (or of
    ``modules``, the part of it this command uses) is absent."""
    missing = missing_modules(extra)
    if modules is not None:
        missing = [m for m in missing if m in modules]
    if missing:
        raise UserError(f"{command} needs the '{extra}' extra (missing: {', '.join(missing)}): "
                        f"pip install 'personalive[{extra}]'")
