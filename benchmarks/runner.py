"""The bench runner: methods × dataset → per-video results (cached) → one table.

Output folder layout (``--output``, default ``bench_results/``)::

    run.json                         the run's settings, dataset entries, metric status, method status
    cache/<method key>/<name>.json   per-video scores (+ <name>.npz: FVD/FID features of the output)
    cache/real-<key>/<name>.npz      FVD/FID features of the driving video (shared by methods)
    failed/<method key>.json         why a method failed (its row says "failed: <reason>")
    speed/<method>.json              one speed row per method (status "failed: <reason>" when it failed)
    shards/<i>-of-<n>.json           written when shard i finishes; holds the run id

<name> = the entry id + a digest of its resolved driving/reference paths with their sizes and
modification times (``entry_cache_name``), so another dataset with the same file names, or an edited
video, never reuses these scores. The run id (``run.json``) digests the settings and entries: a shard
marker left in the folder by an earlier, different run is not taken as finished.
    results.csv/.json/.md, bench.png the merged table and its plot

A per-video result is reused when it exists and was computed with every metric loaded now (an
interrupted run resumes where it stopped; ``--fresh`` ignores the cache). The method key hashes what
changes outputs: method, size, seed, dtype, weights folder, frame limit, method options, and the
cross-reenactment tLP target (``--tlp-cross``).

Sharding: shard i of n takes dataset entries i, i+n, i+2n, ... (quality) and methods i, i+n, ...
(speed). ``--shard i/n`` or the RANK/WORLD_SIZE that ``accelerate launch``/``torchrun`` set select it;
``personalive bench merge DIR`` (or shard 0, which waits for the others' markers) merges.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks import configs
from benchmarks.quality import QUALITY_COLUMNS, identity_protocol, load_metrics, score_video
from personalive_cli import registry
from personalive_cli.errors import UserError
from personalive_cli.io.outputs import NewFolder, check_output_folder


@dataclass
class BenchConfig:
    methods: list[str]
    dataset: str | None = None
    output: str = "bench_results"
    size: int = 512
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 42
    weights: str | None = None
    frames: int | None = None          # first N frames of each video
    max_videos: int | None = None
    metrics: list[str] | None = None   # quality columns (default: all)
    metrics_weights: str | None = None
    strict: bool = False
    quality: bool = True
    speed: bool = False
    random_weights: bool = False
    warmup: int = 3
    steps: int = 20
    speed_fps: float | None = None     # pace of the real-time run (default: the dataset's fps, else 25)
    budget_s: float | None = None
    fresh: bool = False
    shard: tuple[int, int] = (0, 1)
    tlp_cross: str = "driving"         # cross-reenactment tLP target: "driving" or "none" (METRICS.md)
    method_options: dict = field(default_factory=dict)
    configs: str | None = None         # speed configurations of each configurable method (benchmarks/configs.py)


def resolve_methods(spec: str | list[str]) -> list[str]:
    """``all`` = every registered method; otherwise comma-separated names (unknown → UserError)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise UserError("--methods is empty")
    if "all" in names:
        return list(registry.available())
    for n in names:
        configs.split(n)  # a registered name, with an optional [configuration] (benchmarks/configs.py)
    return list(dict.fromkeys(names))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not (0 <= int(m.group(1)) < int(m.group(2))):
        raise UserError(f"--shard must be i/n with 0 <= i < n, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def detect_shard() -> tuple[int, int]:
    """(index, count) from accelerate's state, or the RANK/WORLD_SIZE of ``accelerate launch``/``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        try:
            from accelerate import PartialState

            st = PartialState()
            if st.num_processes > 1:
                return st.process_index, st.num_processes
        except Exception:  # noqa: BLE001 - accelerate absent or no process group: the env is enough
            pass
        return int(os.environ.get("RANK", "0")), world
    return 0, 1


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def method_key(cfg: BenchConfig, name: str) -> str:
    weights = str(Path(cfg.weights).resolve()) if cfg.weights else None
    return f"{safe_name(name)}-{cfg.size}-" + _digest(
        {"m": name, "size": cfg.size, "seed": cfg.seed, "dtype": cfg.dtype, "weights": weights,
         "frames": cfg.frames, "opts": cfg.method_options, "tlp_cross": cfg.tlp_cross})


def _file_id(path: Path | None) -> dict | None:
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        return {"path": str(p)}
    return {"path": str(p), "size": st.st_size, "mtime": st.st_mtime_ns}


def entry_cache_name(root: Path, entry) -> str:
    """The cache file stem of one entry: its id + a digest of the resolved driving and reference files
    (path, size, mtime), so the same ids from another dataset or an edited file are not reused."""
    return f"{safe_name(entry.id)}-" + _digest({"protocol": entry.protocol,
                                            "driving": _file_id(entry.driving_path(root)),
                                            "reference": _file_id(entry.reference_path(root))})


def run_id(cfg: BenchConfig, entries: list[dict], count: int) -> str:
    """Digest of the run's settings (all but the shard index and --fresh) and its entries."""
    conf = {k: v for k, v in asdict(cfg).items() if k not in ("shard", "fresh")}
    return _digest({"config": conf, "entries": entries, "shards": count})


def shards_finished(out: Path, count: int, rid: str | None = None) -> list[int]:
    """Indices of the shards whose marker belongs to this run (``rid``; default: run.json's)."""
    if rid is None:
        try:
            rid = json.loads((Path(out) / "run.json").read_text()).get("run_id")
        except (OSError, ValueError):
            return []
    done = []
    for i in range(count):
        try:
            m = json.loads((Path(out) / "shards" / f"{i}-of-{count}.json").read_text())
        except (OSError, ValueError):
            continue
        if m.get("run_id") == rid:
            done.append(i)
    return done


def real_key(cfg: BenchConfig) -> str:
    return f"real-{cfg.size}-" + _digest({"size": cfg.size, "frames": cfg.frames})


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.part.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


class Progress:
    """Callbacks the CLI turns into rich progress bars (no-ops by default)."""

    def start(self, label: str, total: int) -> None: ...
    def advance(self, label: str, n: int = 1, info: str = "") -> None: ...
    def log(self, text: str) -> None: ...
    def stop(self) -> None: ...


def run_shard(cfg: BenchConfig, progress: Progress | None = None,
              metric_overrides: dict | None = None, metric_factory: Callable | None = None) -> Path:
    """Do this shard's part of the work (quality videos, speed methods); returns the output folder."""
    from data_tools.manifest import load_dataset

    progress = progress or Progress()
    out = check_output_folder(cfg.output, inputs=[cfg.dataset])
    index, count = cfg.shard
    methods = configs.expand(resolve_methods(cfg.methods), cfg.configs, cfg.device)
    columns = list(cfg.metrics or QUALITY_COLUMNS)
    unknown = [c for c in columns if c not in QUALITY_COLUMNS]
    if unknown:
        raise UserError(f"unknown metric column(s) {', '.join(unknown)}; known: {', '.join(QUALITY_COLUMNS)}")
    root, entries = (None, [])
    if cfg.dataset:
        root, entries = load_dataset(cfg.dataset)
        if cfg.max_videos:
            entries = entries[: cfg.max_videos]
    if cfg.tlp_cross not in ("driving", "none"):
        raise UserError(f"--tlp-cross must be driving or none, got {cfg.tlp_cross!r}")
    if not cfg.quality and not cfg.speed:
        raise UserError("nothing to do: enable quality (--dataset) or --speed")
    do_quality = cfg.quality and bool(entries)
    if cfg.quality and not cfg.dataset and not cfg.speed:
        raise UserError("quality metrics need --dataset (a folder of videos or a manifest); or pass --speed")

    from benchmarks.metrics import MetricUnavailable

    metric_device = _shard_device(cfg.device, index, count)
    metrics = None
    if do_quality:
        try:
            metrics = load_metrics(columns, cfg.metrics_weights, metric_device, cfg.strict, metric_overrides,
                                   **({"factory": metric_factory} if metric_factory else {}))
        except MetricUnavailable as exc:
            raise UserError(f"--strict: {exc}") from None
    # a folder this run creates is removed again if it fails before any result is in it
    with NewFolder(out, scaffolding=("run.json",)):
        _run_checked(cfg, progress, out, methods, columns, root, entries, do_quality, metrics, metric_device)
    return out


def _run_checked(cfg: BenchConfig, progress: Progress, out: Path, methods: list[str], columns: list[str],
                 root, entries, do_quality: bool, metrics, metric_device) -> None:
    index, count = cfg.shard
    id_set = identity_protocol(e.protocol for e in entries) if entries else "self"
    method_status = {}
    for name in methods:
        st = registry.get(configs.split(name)[0]).status(cfg.weights)
        method_status[name] = {"ready": st.ready, "detail": st.detail, "key": method_key(cfg, name)}
    run = {"config": {k: v for k, v in asdict(cfg).items() if k not in ("shard",)},
           "shards": count, "dataset_root": str(root) if root else None,
           "entries": [{**asdict(e), "cache_name": entry_cache_name(root, e)} for e in entries] if do_quality else [],
           "id_set": id_set,
           "columns": columns, "methods": method_status, "real_key": real_key(cfg),
           "metrics": {"loaded": sorted(metrics.objects) if metrics else [],
                       "missing": metrics.missing if metrics else {}}}
    run["run_id"] = rid = run_id(cfg, run["entries"], count)
    _write_json(out / "run.json", run)
    marker = out / "shards" / f"{index}-of-{count}.json"
    marker.unlink(missing_ok=True)

    done = {"quality": [], "speed": []}
    if do_quality:
        mine = entries[index::count]
        done["quality"] = _quality(cfg, out, root, mine, methods, method_status, metrics, id_set, progress,
                                   metric_device)
    metrics = None  # free the metric networks: the speed phase measures the method alone
    _free_memory()
    if cfg.speed:
        done["speed"] = _speed(cfg, out, root, entries, methods[index::count], progress, index, count)
    _write_json(marker, {"shard": index, "of": count, "run_id": rid, "finished": time.time(), **done})


class _BadInput(Exception):
    """A dataset entry that cannot be read: raised as such, not recorded as the method's failure."""


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"[:300]


def _shard_device(device: str, index: int, count: int) -> str:
    """One GPU per process when sharded on CUDA (cuda:LOCAL_RANK)."""
    import torch

    if count > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", index)) % torch.cuda.device_count()
        return f"cuda:{local}"
    return device


def _quality(cfg, out, root, entries, methods, method_status, metrics, id_set, progress, device):
    """Method by method (one model in memory at a time), video by video; cached results are skipped."""
    import gc

    from benchmarks.protocols import load_sample, run_method
    from benchmarks.quality import set_features
    from personalive_cli.pipeline.animate import build_method

    loaded = sorted(metrics.objects)
    runnable = [m for m in methods if method_status[m]["ready"]]
    done = []
    # the driving videos' FVD/FID features, shared by every method
    real_dir = out / "cache" / real_key(cfg)
    real_dir.mkdir(parents=True, exist_ok=True)
    real_needed = {k for k in loaded if k in ("FVD", "FID")}
    for entry in entries:
        real_path = real_dir / f"{entry_cache_name(root, entry)}.npz"
        need = real_needed if entry.protocol == id_set else set()
        real = {} if cfg.fresh else load_npz(real_path)
        if set(map(str, real.get("metrics", []))) != need or not real_path.is_file():
            feats = set_features(metrics, load_sample(root, entry, cfg.size, cfg.frames).driving) if need else {}
            feats["metrics"] = np.asarray(sorted(need), dtype=str)
            _save_npz(real_path, feats)
    progress.start("quality", len(entries) * max(1, len(runnable)))
    for name in runnable:
        method = None
        failed_path = out / "failed" / f"{method_status[name]['key']}.json"
        failed_path.unlink(missing_ok=True)
        current = None
        try:
            for entry in entries:
                current = entry.id
                rec_path = out / "cache" / method_status[name]["key"] / f"{entry_cache_name(root, entry)}.json"
                if not cfg.fresh and rec_path.is_file():
                    rec = json.loads(rec_path.read_text())
                    if set(loaded) <= set(rec.get("metrics", [])) and rec.get("id_set") == id_set:
                        progress.advance("quality", info=f"{name}: {entry.id} (cached)")
                        continue
                try:
                    sample = load_sample(root, entry, cfg.size, cfg.frames)
                except Exception as exc:  # noqa: BLE001 - the dataset's fault, not the method's
                    raise _BadInput(exc) from exc
                base, variant, dtype = configs.split(name)
                per_video = getattr(registry.get(base), "takes_driving_context", False)  # this clip's fps, audio
                if method is None or per_video:
                    options = {**cfg.method_options, **variant, **(sample.context() if per_video else {})}
                    method = None
                    method = build_method(base, cfg.size, device, dtype or cfg.dtype, cfg.seed, cfg.weights,
                                          **options)
                t0 = time.perf_counter()
                generated = run_method(method, sample)
                seconds = time.perf_counter() - t0
                scores, feats = score_video(metrics, entry.protocol, sample.reference, sample.driving, generated,
                                            id_set, tlp_cross=cfg.tlp_cross)
                rec_path.parent.mkdir(parents=True, exist_ok=True)
                if feats:
                    _save_npz(rec_path.with_suffix(".npz"), feats)
                else:
                    rec_path.with_suffix(".npz").unlink(missing_ok=True)
                _write_json(rec_path, {"id": entry.id, "protocol": entry.protocol, "method": name,
                                       "frames": len(generated), "seconds": seconds, "scores": scores,
                                       "metrics": loaded, "id_set": id_set, "tlp_cross": cfg.tlp_cross})
                done.append(f"{name}/{entry.id}")
                progress.advance("quality", info=f"{name}: {entry.id} {len(generated) / max(seconds, 1e-9):.1f} fps")
        except _BadInput as exc:
            raise exc.args[0] from None
        except Exception as exc:  # noqa: BLE001 - one method failing (OOM, a bug) must not end the bench
            reason = f"{_reason(exc)} (video {current})"
            _write_json(failed_path, {"method": name, "reason": reason})
            progress.log(f"{name}: failed: {reason}; going on with the other methods")
        method = None
        gc.collect()
        _free_memory()
    return done


def _speed(cfg, out, root, entries, methods, progress, index, count):
    from benchmarks.protocols import load_sample
    from benchmarks.speed import SpeedOptions, measure_method

    reference, driving, fps = _speed_input(cfg, root, entries, load_sample)
    opts = SpeedOptions(size=cfg.size, device=_shard_device(cfg.device, index, count), dtype=cfg.dtype,
                        seed=cfg.seed, weights=cfg.weights, random_weights=cfg.random_weights,
                        warmup=cfg.warmup, steps=cfg.steps, fps=cfg.speed_fps or fps, budget_s=cfg.budget_s,
                        method_options=dict(cfg.method_options))
    peaks: dict = {}
    done = []
    for name in methods:
        label = f"speed {name}"
        progress.start(label, cfg.warmup + cfg.steps)

        def on_step(phase, k, total, label=label):
            progress.advance(label, info=phase)

        try:
            row = measure_method(name, opts, reference, driving, peak_cache=peaks, on_step=on_step)
        except Exception as exc:  # noqa: BLE001 - one method failing (OOM, a bug) must not end the bench
            row = {"method": name, "status": f"failed: {_reason(exc)}"}
            progress.log(f"speed {name}: {row['status']}; going on with the other methods")
        _free_memory()
        row["speed input"] = "dataset clip" if driving is not None else "synthetic"
        _write_json(out / "speed" / f"{safe_name(name)}.json", row)
        done.append(name)
    return done


def _speed_input(cfg, root, entries, load_sample):
    """Reference and driving frames for the speed run: the first dataset video, else synthetic."""
    if entries:
        s = load_sample(root, entries[0], cfg.size, cfg.frames)
        return s.reference, s.driving, s.fps
    y, x = np.mgrid[0:cfg.size, 0:cfg.size] / cfg.size  # a smooth synthetic image
    img = np.stack([x, y, 1 - (x - 0.5) ** 2 - (y - 0.5) ** 2], -1)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), None, 25.0


def wait_for_shards(out: Path, count: int, timeout: float = 24 * 3600, poll: float = 0.5,
                    rid: str | None = None) -> None:
    """Wait until every shard of this run (``rid``; default: run.json's) wrote its marker."""
    deadline = time.time() + timeout
    while True:
        finished = set(shards_finished(out, count, rid))
        missing = [i for i in range(count) if i not in finished]
        if not missing:
            return
        if time.time() > deadline:
            raise UserError(f"shards {missing} of {count} did not finish; run `personalive bench merge {out}` later")
        time.sleep(poll)
