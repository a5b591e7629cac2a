"""Several PersonaLive streams on one device: aggregate FPS and per-stream step latency for N = 1, 2, 4, 8.

N viewers, each animating their own portrait (the demo portrait, mirrored and shifted per viewer) from the
demo video, stepped together by `StreamGroup` (one denoising-UNet pass and one VAE decode for all). After
every stream's first step and ``--warmup`` group steps, ``--steps`` group steps are timed:

- aggregate FPS = N × 4 frames / the median group step;
- per-stream step latency p50 / p95 = the group step times (every stream waits for the whole batch);
- peak memory (CUDA: max allocated during the run).

    python -m benchmarks.multistream --preset tiny --device cpu --size 128 --streams 1,2,4
    python -m benchmarks.multistream --preset full --device cuda --dtype fp16 --size 512 --streams 1,2,4,8
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from personalive_cli.demo import demo_files
from personalive_cli.faces.crop import resize
from personalive_cli.io.images import read_image
from personalive_cli.io.video import VideoReader
from personalive_cli.pipeline.components import PersonaLiveConfig, PersonaLiveModels
from personalive_cli.pipeline.engine import EngineOptions, StreamEngine
from personalive_cli.pipeline.multistream import StreamGroup

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(models, n: int, size: int, device: torch.device, dtype: torch.dtype, warmup: int, steps: int,
            reference: np.ndarray, frames: list[np.ndarray]) -> dict:
    engines = []
    for i in range(n):
        portrait = np.roll(reference[:, ::-1] if i % 2 else reference, shift=8 * (i // 2), axis=1)
        engine = StreamEngine(models, size=size, device=device, dtype=dtype, seed=i,
                              options=EngineOptions(static_shapes=True))
        engine.set_reference(np.ascontiguousarray(portrait))
        engine.step(np.stack(frames[:4]), decode_warmup=False)
        engines.append(engine)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    group = StreamGroup(engines)
    times = []
    for k in range(warmup + steps):
        chunk = [np.stack(frames[(4 * (k + 1 + j)) % (len(frames) - 3):][:4]) for j in range(n)]
        _sync(device)
        t0 = time.perf_counter()
        group.step(chunk)
        _sync(device)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    row = {"streams": n, "aggregate FPS": 4 * n / median, "per-stream FPS": 4 / median,
           "step p50 (s)": median, "step p95 (s)": float(np.percentile(times, 95)), "steps": len(times)}
    if device.type == "cuda":
        row["peak mem (GiB)"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: fp16 on CUDA, fp32 elsewhere")
    p.add_argument("--streams", default="1,2,4,8")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    config = PersonaLiveConfig.tiny() if args.preset == "tiny" else PersonaLiveConfig()
    models = PersonaLiveModels.random(config, seed=0).to(device=device, dtype=dtype)
    ref_path, drive_path = demo_files()
    reference = resize(read_image(ref_path), args.size)
    frames = [resize(f, args.size) for f in VideoReader(drive_path).iter_frames(0, 64)]
    rows = []
    for n in (int(s) for s in args.streams.split(",")):
        with torch.no_grad():
            rows.append(measure(models, n, args.size, device, dtype, args.warmup, args.steps, reference, frames))
        print(json.dumps(rows[-1]), flush=True)
    result = {"preset": args.preset, "size": args.size, "device": str(device), "dtype": str(dtype),
              "torch": torch.__version__, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
