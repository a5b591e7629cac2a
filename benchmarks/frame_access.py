"""Random frame access of the training datasets' two readers: decord (``decord2``) against PyAV seeking.

Each sample does what a dataset sample does: open the clip, read its frames, close it. Two workloads:

* ``pair``: 2 random frames (the image-pair dataset of stages I/II);
* ``window``: 40 frames at stride 4 from a random start (the video dataset of stage III).

Both readers get the same random index sets; the run alternates them in ``rounds`` (so a change of load
on the machine hits both alike) and reports, per workload, the median milliseconds per sample of each
and the ratio PyAV / decord (> 1: decord is faster). Decoding is single-threaded in both, as in a
DataLoader worker.

    python -m benchmarks.frame_access [VIDEO ...] [--samples 200] [--rounds 5] [--json]

Without VIDEO it uses the demo driving video shipped with the package (100 frames, 512², 25 fps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from personalive_cli.errors import UserError
from personalive_cli.training.frames import BACKENDS, CorruptVideo, open_frames

DEMO = Path(__file__).resolve().parents[1] / "personalive_cli" / "demo" / "driving.mp4"


def workloads(n_frames: int, samples: int, seed: int = 0, frames: int = 40, stride: int = 4) -> dict:
    """Per workload, ``samples`` index lists drawn for a clip of ``n_frames`` frames."""
    rng = np.random.default_rng(seed)
    span = min(n_frames, (frames - 1) * stride + 1)
    pairs = [rng.choice(n_frames, size=2, replace=n_frames < 2).tolist() for _ in range(samples)]
    windows = []
    for _ in range(samples):
        start = int(rng.integers(0, n_frames - span + 1))
        windows.append(np.linspace(start, start + span - 1, frames).astype(int).tolist())
    return {"pair": pairs, "window": windows}


def measure(video: str | Path, samples: int = 200, rounds: int = 5, backends=BACKENDS, seed: int = 0) -> dict:
    """``{workload: {backend: median ms/sample, ...,"ratio pyav/decord": r}}`` plus the clip's facts."""
    video = Path(video)
    if not video.is_file():
        raise UserError(f"video not found: {video}")
    # Frames both readers count (decord ignores MP4 edit lists and may count more): index within both.
    lengths = {}
    for b in backends:  # also the untimed warm-up (decord's first open initialises the library)
        with open_frames(video, b) as f:
            lengths[b] = len(f)
            f.read([0, len(f) // 2])
    n_frames = min(lengths.values())
    plan = workloads(n_frames, samples, seed)
    times: dict[str, dict[str, list[float]]] = {w: {b: [] for b in backends} for w in plan}
    bounds = np.linspace(0, samples, rounds + 1).astype(int)
    for r in range(rounds):
        for workload, index_sets in plan.items():
            # alternate which backend goes first from round to round
            for b in (backends if r % 2 == 0 else backends[::-1]):
                for indices in index_sets[bounds[r]:bounds[r + 1]]:
                    t0 = time.perf_counter()
                    with open_frames(video, b) as f:
                        f.read(indices)
                    times[workload][b].append((time.perf_counter() - t0) * 1000)
    result = {"video": str(video), "frames": lengths, "samples": samples, "rounds": rounds}
    for workload, per_backend in times.items():
        row = {b: round(statistics.median(t), 2) for b, t in per_backend.items()}
        if {"decord", "pyav"} <= row.keys():
            row["ratio pyav/decord"] = round(row["pyav"] / row["decord"], 2)
        result[workload] = row
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*", type=Path, help="clips to read (default: the packaged demo)")
    parser.add_argument("--samples", type=int, default=200, help="samples per workload and reader")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the readers")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.samples < args.rounds or args.rounds < 1:
        print("error: need --rounds >= 1 and --samples >= --rounds", file=sys.stderr)
        return 2
    try:
        results = [measure(v, args.samples, args.rounds) for v in (args.videos or [DEMO])]
    except (UserError, CorruptVideo) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for res in results:
        print(f"{res['video']}  frames {res['frames']}  {res['samples']} samples x {res['rounds']} rounds")
        for workload in ("pair", "window"):
            row = res[workload]
            cells = "  ".join(f"{k} {v}" for k, v in row.items())
            print(f"  {workload:6s} median ms/sample: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
