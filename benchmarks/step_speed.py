"""Stream-step time of PersonaLive configurations measured side by side, in one process, alternating.

Every configuration gets its own engine on the same random weights (compiled ones are views over the
eager modules, so a full-size model is held once per dtype), the same portrait, driving frames and
noise. After the first step and ``--warmup`` untimed steps (compilation happens there: reported as
``warm-up (s)``), the configurations take turns: round r times ``--steps`` steps of each, in order, so
that a noisy machine slows all of them alike. Reported per configuration: the median step time over all
rounds, its ratio to the first configuration per round (median and spread, min–max), and the largest
pixel difference to the first configuration's frames at the same steps.

    python -m benchmarks.step_speed --preset tiny --size 256 --configs eager,compile,bf16
    python -m benchmarks.step_speed --preset full --size 256 --threads 2 --configs eager,compile --rounds 3 --steps 1

Configurations are the bench's settings (benchmarks/configs.py) joined with ``+``: eager, compile, static,
fused, nhwc, fp32, bf16, fp16, tiny (TAESD; needs the tiny VAE, built randomly here).
"""

from __future__ import annotations

import argparse
import copy
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
from personalive_cli.pipeline.acceleration import SpeedOptions, accelerate_models
from personalive_cli.pipeline.components import PersonaLiveConfig, PersonaLiveModels
from personalive_cli.pipeline.engine import EngineOptions, StreamEngine

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_config(text: str) -> dict:
    cfg = {"dtype": "fp32", "compile": False, "static": False, "fused": False, "nhwc": False, "tiny_vae": False}
    for token in filter(None, text.replace(",", "+").split("+")):
        if token in DTYPES:
            cfg["dtype"] = token
        elif token == "tiny":
            cfg["tiny_vae"] = True
        elif token in cfg:
            cfg[token] = True
        elif token != "eager":
            raise SystemExit(f"unknown setting {token!r} in {text!r}")
    return cfg


def compiled_view(models: PersonaLiveModels, mode: str = "default") -> PersonaLiveModels:
    """``models`` with the step's networks compiled (torch.compile wrappers over the same modules, so the
    weights are shared with the eager engine)."""
    view = copy.copy(models)
    for name in ("denoising_unet", "keypoint_extractor", "motion_encoder", "pose_guider"):
        setattr(view, name, torch.compile(getattr(models, name), mode=mode))
    for name in ("vae", "taesd"):
        vae = getattr(models, name, None)
        if vae is None:
            continue
        clone = copy.copy(vae)
        clone._modules = dict(vae._modules)  # a module dict of its own: the eager VAE keeps its decoder
        clone.decoder = torch.compile(vae.decoder, mode=mode)
        setattr(view, name, clone)
    return view


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--configs", default="eager,compile")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first (compilation)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed steps per configuration per round")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    configs = {n: parse_config(n) for n in names}

    ref_path, drive_path = demo_files()
    reference = read_image(ref_path)
    total = 1 + args.warmup + args.rounds * args.steps
    frames = [resize(f, args.size) for f in VideoReader(drive_path).iter_frames(0, 4 * total)]
    frames = (frames * (4 * total // max(len(frames), 1) + 1))[: 4 * total]  # the demo cycled if too short

    config = PersonaLiveConfig.tiny() if args.preset == "tiny" else PersonaLiveConfig()
    base = PersonaLiveModels.random(config, seed=0)
    if any(c["tiny_vae"] for c in configs.values()):
        from diffusers import AutoencoderTiny

        base.taesd = AutoencoderTiny() if args.preset == "full" else AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8))
    by_dtype: dict[str, PersonaLiveModels] = {}
    engines, warm, outputs, times = {}, {}, {}, {n: [] for n in names}
    for n, c in configs.items():
        if c["dtype"] not in by_dtype:
            by_dtype[c["dtype"]] = copy.deepcopy(base).to(device=device, dtype=DTYPES[c["dtype"]])
        models = by_dtype[c["dtype"]]
        if c["fused"] or c["nhwc"]:
            models = copy.deepcopy(models)
            accelerate_models(models, SpeedOptions(fuse_qkv=c["fused"], channels_last=c["nhwc"]), device)
        if c["compile"]:
            models = compiled_view(models)
        engine = StreamEngine(models, size=args.size, device=device, dtype=DTYPES[c["dtype"]], seed=7,
                              options=EngineOptions(static_shapes=c["static"], tiny_vae=c["tiny_vae"]))
        engine.set_reference(reference)
        t0 = time.perf_counter()
        outputs[n] = [engine.step(np.stack(frames[4 * i: 4 * i + 4])).frames for i in range(1 + args.warmup)]
        warm[n] = time.perf_counter() - t0
        engines[n] = engine
        print(f"{n}: first step + {args.warmup} warm-up steps {warm[n]:.1f} s", flush=True)
    del base
    step = 1 + args.warmup
    ratios = {n: [] for n in names}
    for r in range(args.rounds):
        round_times = {}
        for n in names:
            t = []
            for k in range(args.steps):
                i = step + k
                t0 = time.perf_counter()
                out = engines[n].step(np.stack(frames[4 * i: 4 * i + 4]))
                t.append(time.perf_counter() - t0)
                outputs[n].append(out.frames)
            times[n] += t
            round_times[n] = statistics.median(t)
        for n in names:
            ratios[n].append(round_times[names[0]] / round_times[n])
        step += args.steps
        print(f"round {r + 1}: " + ", ".join(f"{n} {round_times[n]:.3f} s" for n in names), flush=True)
    first = names[0]
    rows = []
    for n in names:
        diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(outputs[n], outputs[first],
                                                                                       strict=True))
        rows.append({"config": n, "step median (s)": statistics.median(times[n]),
                     f"speed-up vs {first} (median)": statistics.median(ratios[n]),
                     "spread (min-max)": [min(ratios[n]), max(ratios[n])], "warm-up (s)": warm[n],
                     f"max pixel diff vs {first}": diff})
    result = {"preset": args.preset, "size": args.size, "device": str(device), "threads": torch.get_num_threads(),
              "rounds": args.rounds, "steps per round": args.steps, "torch": torch.__version__, "rows": rows}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
