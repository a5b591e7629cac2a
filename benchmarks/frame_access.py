"""Random frame access of the training datasets' two readers: decord (``decord2``) against PyAV seeking.

Each sample does what a dataset sample does: open the clip, read its frames, close it. Two workloads:

* ``pair``: 2 random frames (the image-pair dataset of stages I/II);
* ``window``: 40 frames at stride 4 from a random start (the video dataset of stage III).

Both readers get the same random index sets and take turns sample by sample; per workload the run
reports each reader's median wall and CPU milliseconds per sample and the ratios PyAV / decord (> 1:
decord is faster). Decoding is single-threaded in both, as in a DataLoader worker.

    python -m benchmarks.frame_access [VIDEO ...] [--samples 200] [--json]

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
from personalive_cli.training.frames import CorruptVideo, installed_backends, open_frames

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


def measure(video: str | Path, samples: int = 200, backends: tuple[str, ...] | None = None,
            seed: int = 0) -> dict:
    """``{workload: {"<backend> ms": median wall ms/sample, "<backend> cpu ms": median CPU ms/sample, ...,
    "ratio pyav/decord": r, "cpu ratio pyav/decord": r}}`` plus the clip's facts. The readers take
    turns sample by sample (who goes first alternates too), so a change of load on the machine hits
    both alike; CPU time (this process, all threads) is the figure other processes disturb least."""
    backends = backends or installed_backends()  # decord only where decord2 is installed
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
    wall: dict[str, dict[str, list[float]]] = {w: {b: [] for b in backends} for w in plan}
    cpu: dict[str, dict[str, list[float]]] = {w: {b: [] for b in backends} for w in plan}
    for workload, index_sets in plan.items():
        for i, indices in enumerate(index_sets):
            for b in (backends if i % 2 == 0 else backends[::-1]):
                w0, c0 = time.perf_counter(), time.process_time()
                with open_frames(video, b) as f:
                    f.read(indices)
                wall[workload][b].append((time.perf_counter() - w0) * 1000)
                cpu[workload][b].append((time.process_time() - c0) * 1000)
    result = {"video": str(video), "frames": lengths, "samples": samples}
    for workload in plan:
        row = {}
        for b in backends:
            row[f"{b} ms"] = round(statistics.median(wall[workload][b]), 2)
            row[f"{b} cpu ms"] = round(statistics.median(cpu[workload][b]), 2)
        if set(backends) >= {"decord", "pyav"}:
            row["ratio pyav/decord"] = round(row["pyav ms"] / row["decord ms"], 2)
            row["cpu ratio pyav/decord"] = round(row["pyav cpu ms"] / row["decord cpu ms"], 2)
        result[workload] = row
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*", type=Path, help="clips to read (default: the packaged demo)")
    parser.add_argument("--samples", type=int, default=200, help="samples per workload and reader")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.samples < 1:
        print("error: --samples must be at least 1", file=sys.stderr)
        return 2
    try:
        results = [measure(v, args.samples) for v in (args.videos or [DEMO])]
    except (UserError, CorruptVideo) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for res in results:
        print(f"{res['video']}  frames {res['frames']}  {res['samples']} samples per reader")
        for workload in ("pair", "window"):
            row = res[workload]
            cells = "  ".join(f"{k} {v}" for k, v in row.items())
            print(f"  {workload:6s} median per sample: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
