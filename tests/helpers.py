"""Helpers shared by tests (importable as ``helpers`` because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEMO_REF = SHARED / "demo" / "ref_image.png"
DEMO_DRIVE = SHARED / "demo" / "driving_video.mp4"
DEMO_FRAMES = 1531  # presented frames; the header says 1641 (an edit list trims 110)


def make_driving_with_audio(ffmpeg: str, src: Path, dst: Path, fps: str, seconds: float,
                            size: int | None = None) -> Path:
    """Re-time ``src`` to ``fps`` and mux a 440 Hz tone, as a driving video with an audio track;
    ``size``: scaled to ``size``² (for tests about timing and audio, where pixels only cost encoding time)."""
    scale = ["-vf", f"scale={size}:{size}"] if size else []
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(src),
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", str(seconds),
                    "-r", fps, *scale, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(dst)],
                   check=True)
    return dst


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """Encode uint8 frames with PyAV (tests' own synthetic videos)."""
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    return path


def probe(path: Path) -> dict:
    """Frame count, size, fps and audio duration of a file, read back with PyAV."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
    with av.open(str(path)) as c:
        audio = c.streams.audio[0] if c.streams.audio else None
        audio_seconds = None
        if audio is not None:
            samples = sum(f.samples for f in c.decode(audio))
            audio_seconds = samples / audio.codec_context.sample_rate
        v = c.streams.video[0]
        return {"frames": frames, "width": v.codec_context.width, "height": v.codec_context.height,
                "fps": Fraction(v.guessed_rate or v.average_rate), "audio_seconds": audio_seconds}


def write_vfr_video(path: Path, n: int = 66, seconds: float = 4.0, size: int = 96, seed: int = 0,
                    ffmpeg: str | None = None) -> Path:
    """A variable-frame-rate video: ``n`` frames at irregular times over ``seconds`` (millisecond
    timestamps, as phones write them); with ``ffmpeg``, a 440 Hz tone of ``seconds`` is muxed in."""
    rng = np.random.default_rng(seed)
    gaps = rng.uniform(0.2, 1.8, n)
    gaps *= seconds / gaps.sum()
    pts = np.concatenate([[0], np.round(np.cumsum(gaps[:-1]) * 1000)]).astype(int)
    video = path.with_name(f"{path.stem}.video{path.suffix}") if ffmpeg else path
    with av.open(str(video), mode="w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(pts):
            f = av.VideoFrame.from_ndarray(np.full((size, size, 3), (i * 7) % 255, np.uint8), format="rgb24")
            f.pts, f.time_base = int(t), Fraction(1, 1000)
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    if ffmpeg:
        subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(video), "-f", "lavfi", "-i",
                        "sine=frequency=440:sample_rate=44100", "-t", str(seconds), "-c:v", "copy", "-c:a", "aac",
                        str(path)], check=True)
        video.unlink()
    return path


def invoke(*args, env: dict | None = None, input: bytes | None = None):  # noqa: A002 - subprocess.run's name
    """Run ``personalive ARGS`` in this process, as a user types it (Typer's runner): a
    ``subprocess.run``-like result (returncode, stdout, stderr, and stdout_bytes for binary output;
    ``input``: what stdin holds). For everything not about pipes or signals: a new process would
    spend seconds importing the CLI (and torch, for a model) for nothing."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from personalive_cli.cli.app import app

    r = CliRunner().invoke(app, [str(a) for a in args], env=env, input=input)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr, stdout_bytes=r.stdout_bytes)


def random_keypoint_info(n: int = 1, seed: int = 0, dtype=None):
    """A seeded random ``KeypointInfo`` of ``n`` frames (float64 by default), for keypoint algebra tests."""
    import torch

    from personalive_cli.models.keypoint_extractor import KeypointInfo

    dtype = dtype or torch.float64
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=1.0):
        return (torch.randn(*shape, generator=g) * s).to(dtype)

    return KeypointInfo(kp=r(n, 21, 3, s=0.3), pitch=r(n, s=20), yaw=r(n, s=20), roll=r(n, s=20),
                        t=r(n, 3, s=0.1), scale=1.2 + r(n, 1, s=0.1))


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def one_error_line(r) -> str:
    """The one ``error: ...`` line a bad input must produce (exit status 1, nothing else on stderr)."""
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


def accelerate_launch(num_processes: int = 2) -> list[str]:
    """The start of an ``accelerate launch`` command line for ``num_processes`` CPU processes (gloo; the caller
    hides GPUs), on a free port of its own: tests in parallel workers launch at the same time."""
    import pytest

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # --multi_gpu is accelerate's torchrun launcher; with no GPU visible each process runs on the CPU
    return [accelerate, "launch", "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
            "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no"]
