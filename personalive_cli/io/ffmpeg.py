"""Locate an ffmpeg executable: PATH first, then the static build shipped by ``imageio-ffmpeg``."""

from __future__ import annotations

import os
import shutil

from personalive_cli.errors import UserError


def find_ffmpeg() -> str:
    """Path of a working ffmpeg, or a :class:`UserError` that says how to get one.

    ``PERSONALIVE_FFMPEG`` overrides the search (an empty value means "no ffmpeg", which tests use).
    """
    override = os.environ.get("PERSONALIVE_FFMPEG")
    if override is not None:
        if override and shutil.which(override):
            return shutil.which(override)
        raise UserError(f"ffmpeg not found (PERSONALIVE_FFMPEG={override!r} is not an executable); "
                        "install it with `apt install ffmpeg` or `pip install imageio-ffmpeg`")
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        pass
    raise UserError("ffmpeg not found on PATH; install it with `apt install ffmpeg` or `pip install imageio-ffmpeg`")
