"""Per-frame time of LivePortrait (random weights; speed does not depend on the values).

``python -m baselines.liveportrait.timing [--config full|tiny] [--frames N] [--threads T] [--device cpu]``
times the per-reference work (F + M on the 256 x 256 source) once and then, per driving frame, M on
the driving frame + keypoint algebra + stitching + W + G (256 in -> 512 out), excluding cropping and
paste-back, and prints one JSON line per stage (median seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main(argv: list[str] | None = None) -> None:
    from baselines.liveportrait.models import LivePortraitConfig, LivePortraitModels
    from baselines.liveportrait.motion import Motion, compose

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", choices=("full", "tiny"), default="full")
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = LivePortraitConfig() if args.config == "full" else LivePortraitConfig.tiny()
    models = LivePortraitModels.random(cfg).to(device).eval()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    gen = torch.Generator().manual_seed(0)
    source = torch.rand(1, 3, 256, 256, generator=gen).to(device)
    times: dict[str, list[float]] = {"M": [], "W": [], "G": [], "frame": []}
    with torch.inference_mode():
        sync()
        t0 = time.perf_counter()
        feature = models.appearance_feature_extractor(source)
        src = Motion.from_info(models.motion_extractor(source, with_exp=True))
        x_s = src.keypoints()
        sync()
        per_reference = time.perf_counter() - t0
        first = None
        for i in range(args.warmup + args.frames):
            frame = torch.rand(1, 3, 256, 256, generator=gen).to(device)
            sync()
            t0 = time.perf_counter()
            drv = Motion.from_info(models.motion_extractor(frame, with_exp=True))
            first = first or drv
            x_d = models.stitching_retargeting_module.stitch(x_s, compose(src, drv, first).keypoints())
            sync()
            t1 = time.perf_counter()
            warped, _, _ = models.warping_module(feature, x_s, x_d)
            sync()
            t2 = time.perf_counter()
            image = models.spade_generator(warped)
            sync()
            t3 = time.perf_counter()
            assert image.shape[-2:] == (512, 512)
            if i >= args.warmup:
                for key, value in zip(("M", "W", "G", "frame"), (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                    times[key].append(value)
    result = {"config": args.config, "device": str(device), "threads": torch.get_num_threads(),
              "frames": args.frames, "per_reference_s": round(per_reference, 3)}
    result.update({f"{k}_s": round(statistics.median(v), 3) for k, v in times.items()})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
