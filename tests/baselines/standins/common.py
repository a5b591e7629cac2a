"""Shared bits of the stand-in scripts (TEST DOUBLES: they mimic an upstream's command line and write a
video; they are never registered as methods)."""

import json
import os
import sys
from pathlib import Path

import av
import numpy as np


def read_video(path):
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    with av.open(str(path)) as c:
        audio = None
        if c.streams.audio:
            s = c.streams.audio[0]
            samples = sum(f.samples for f in c.decode(s))
            audio = samples / s.codec_context.sample_rate
        fps = float(c.streams.video[0].average_rate)
    return frames, fps, audio


def write_video(path, frames, fps=25):
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=int(round(fps)))
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        c.mux(s.encode(None))


def record(args: dict, **extra):
    """Write what the stand-in was called with next to the adapter's work folder (for the test)."""
    target = os.environ.get("STANDIN_RECORD")
    if target:
        Path(target).write_text(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), **args, **extra}, default=str))


def frames_like(source_png, n, size=512):
    from PIL import Image

    img = np.asarray(Image.open(source_png).convert("RGB").resize((size, size)))
    return [np.clip(img.astype(int) + (i * 7) % 50, 0, 255).astype(np.uint8) for i in range(n)]
