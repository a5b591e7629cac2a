"""Merge a bench output folder into one table: pandas DataFrame → rich tables, CSV, JSON, Markdown, PNG."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from rich.markup import escape

from benchmarks.paper import PAPER_SOURCE, paper_rows
from benchmarks.quality import COLUMN_METRIC, HIGHER_IS_BETTER, QUALITY_COLUMNS, aggregate, identity_protocol
from benchmarks.speed import SPEED_COLUMNS
from personalive_cli.errors import UserError

MEASURED = "measured"
INFO_COLUMNS = ("method", "source", "status", "quality", "speed", "set", "videos")
TAIL_COLUMNS = ("mem kind", "device", "dtype", "size", "frames/step", "warm-up steps", "steps", "speed input", "note")
SPEED_ARROWS = {"FPS": "↑", "latency (s)": "↓", "frame latency (s)": "↓", "frame latency p95 (s)": "↓", "latency floor (s)": "↓",
                "step median (s)": "↓", "step p95 (s)": "↓", "peak mem (GiB)": "↓"}


class _Metrics:
    """What ``aggregate`` needs to know about the metrics of a finished run (from run.json)."""

    def __init__(self, loaded, missing):
        self.loaded, self.missing = set(loaded), dict(missing)

    def has(self, col):
        return COLUMN_METRIC[col] in self.loaded

    def reason(self, col):
        return self.missing.get(COLUMN_METRIC[col])


def merge(output: str | os.PathLike, partial: bool = False) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rows for every method of the run in ``output`` (quality from the per-video cache, speed rows),
    then the paper's rows. Returns (table, column notes: why a column has no value)."""
    from benchmarks.runner import load_npz, safe_name

    out = Path(output)
    if not (out / "run.json").is_file():
        raise UserError(f"no bench run in {out} (run.json missing)")
    run = json.loads((out / "run.json").read_text())
    entries = run["entries"]
    columns = run["columns"]
    metrics = _Metrics(run["metrics"]["loaded"], run["metrics"]["missing"])
    id_set = run.get("id_set") or identity_protocol(e["protocol"] for e in entries)
    protocols = {e["protocol"] for e in entries}
    rows, notes = [], {}
    for name, st in run["methods"].items():
        row: dict = {"method": name, "source": MEASURED}
        status = []
        if entries:
            failed = out / "failed" / f"{st['key']}.json"
            if not st["ready"]:
                status.append(f"weights absent: {st['detail']}")
                row["quality"] = "weights absent"
            elif failed.is_file():
                status.append(f"failed: {json.loads(failed.read_text()).get('reason', '?')}")
                row["quality"] = "failed"
            else:
                recs, fake, real, missing = [], {"FVD": [], "FID": []}, {"FVD": [], "FID": []}, []
                for e in entries:
                    name_ = e.get("cache_name") or safe_name(e["id"])
                    p = out / "cache" / st["key"] / f"{name_}.json"
                    if not p.is_file():
                        missing.append(e["id"])
                        continue
                    rec = json.loads(p.read_text())
                    recs.append({**rec["scores"], "protocol": rec["protocol"]})
                    if e["protocol"] == id_set:
                        f = load_npz(p.with_suffix(".npz"))
                        r = load_npz(out / "cache" / run["real_key"] / f"{name_}.npz")
                        for k in ("FVD", "FID"):
                            if k in f and k in r:
                                fake[k].append(f[k])
                                real[k].append(r[k])
                if missing and not partial:
                    raise UserError(f"{name}: {len(missing)} of {len(entries)} videos have no result yet "
                                    f"(e.g. {missing[0]}); finish the run (same command resumes) or merge --partial")
                values, col_notes = aggregate(recs, fake, real, metrics, id_set, protocols)
                values = {k: v for k, v in values.items() if k in columns or k.endswith(" samples")}
                row.update(values)
                row["videos"] = len(recs)
                row["set"] = id_set
                for c, why in col_notes.items():
                    if c in columns:
                        notes.setdefault(c, why)
                status.append("quality ok" + (f" ({len(missing)} videos missing)" if missing else ""))
                row["quality"] = f"ok ({len(recs)} video{'s' if len(recs) != 1 else ''})" if not missing else f"partial ({len(recs)}/{len(entries)})"
        speed_path = out / "speed" / f"{safe_name(name)}.json"
        if run["config"].get("speed"):
            if speed_path.is_file():
                sp = json.loads(speed_path.read_text())
                for k, v in sp.items():
                    if k not in ("method", "status", "step times", "frame latencies"):
                        row[k] = v
                status.append(f"speed: {sp.get('status', 'ok')}")
                row["speed"] = sp.get("status", "ok").split(":")[0]
            else:
                if not partial:
                    raise UserError(f"{name}: no speed result yet in {out / 'speed'}; finish the run or merge --partial")
                status.append("speed: missing")
        row["status"] = "; ".join(status)
        rows.append(row)
    df = pd.DataFrame(rows)
    paper = paper_rows()
    paper["status"] = "published"
    df = pd.concat([df, paper], ignore_index=True)
    for c in columns:
        if c not in df.columns:
            df[c] = np.nan
    order = [c for c in (*INFO_COLUMNS, *columns, *SPEED_COLUMNS, *TAIL_COLUMNS) if c in df.columns]
    rest = [c for c in df.columns if c not in order]
    return df[order + rest], notes


def write_outputs(df: pd.DataFrame, notes: dict[str, str], output: str | os.PathLike) -> dict[str, Path]:
    out = Path(output)
    paths = {"csv": out / "results.csv", "json": out / "results.json", "md": out / "results.md",
             "png": out / "bench.png"}
    _atomic(paths["csv"], df.to_csv(index=False))
    _atomic(paths["json"], json.dumps({"rows": _records(df), "column_notes": notes,
                                       "paper_source": PAPER_SOURCE}, indent=2, ensure_ascii=False))
    _atomic(paths["md"], to_markdown(df, notes))
    plot(df, out, paths["png"])
    return paths


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in df.to_dict(orient="records")]


INT_COLUMNS = ("videos", "size", "frames/step", "steps", "warm-up steps", "FVD samples", "FID samples")


def fmt(v, col: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if col in INT_COLUMNS and isinstance(v, (int, float, np.integer, np.floating)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:.1f}"
        if abs(v) >= 1:
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"
        return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.2e}"
    return str(v)


def header(col: str) -> str:
    if col in HIGHER_IS_BETTER:
        return f"{col} {'↑' if HIGHER_IS_BETTER[col] else '↓'}"
    return f"{col} {SPEED_ARROWS[col]}" if col in SPEED_ARROWS else col


def _cell(df, i, col, notes) -> str:
    if col in ("quality", "speed") and df.at[i, "source"] != MEASURED:
        return "paper"
    v = df.at[i, col] if col in df.columns else None
    s = fmt(v, col)
    ran = "videos" in df.columns and not pd.isna(df.at[i, "videos"])
    if not s and col in notes and df.at[i, "source"] == MEASURED and ran:
        return "n/a*"
    return s or "–"


def quality_speed_split(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    q = [c for c in ("method", "source", "status", "set", "videos", *QUALITY_COLUMNS) if c in df.columns]
    s = [c for c in ("method", "source", *SPEED_COLUMNS, "device", "dtype", "size", "frames/step", "mem kind")
         if c in df.columns]
    return q, s


def to_markdown(df: pd.DataFrame, notes: dict[str, str]) -> str:
    lines = ["# personalive bench", ""]
    q, s = quality_speed_split(df)
    for title, cols in (("Quality", q), ("Speed", s)):
        if title == "Speed" and not any(c in df.columns for c in SPEED_COLUMNS):
            continue
        lines += [f"## {title}", "", "| " + " | ".join(header(c) for c in cols) + " |",
                  "|" + "---|" * len(cols)]
        for i in df.index:
            lines.append("| " + " | ".join(_cell(df, i, c, notes).replace("|", "\\|") for c in cols) + " |")
        lines.append("")
    if notes:
        lines += ["n/a* — column without a value, and why:", ""]
        lines += [f"- **{', '.join(cols)}**: {why}" for cols, why in grouped_notes(notes)]
        lines.append("")
    lines += [f"Rows with source `{PAPER_SOURCE}` are the paper's published numbers (not measured here). "
              "`latency (s)` is one step's compute (the paper's definition); `frame latency (s)` is a driving "
              "frame's arrival to its output in a real-time paced run. See benchmarks/README.md.", ""]
    return "\n".join(lines)


SHORT = {"tLP (self)": "tLP self", "tLP (cross)": "tLP cross", "ID-SIM (dlib)": "ID dlib", "latency (s)": "step lat s",
         "frame latency (s)": "frame lat s", "frame latency p95 (s)": "frame p95 s", "step p95 (s)": "step p95 s",
         "paced fps": "paced fps", "start (s)": "start s", "latency floor (s)": "floor s", "warm-up (s)": "warm-up s", "peak mem (GiB)": "peak GiB", "GFLOPs/frame": "GFLOP/frame",
         "device TFLOP/s": "device TFLOP/s", "% of peak": "% peak"}
RICH_TABLES = (
    ("quality", ("method", "quality", *QUALITY_COLUMNS), False),
    ("speed", ("method", "speed", "FPS", "latency (s)", "frame latency (s)", "frame latency p95 (s)",
               "latency floor (s)", "step p95 (s)", "paced fps"), False),
    ("compute", ("method", "start (s)", "warm-up (s)", "peak mem (GiB)", "GFLOPs/frame", "TFLOP/s", "device TFLOP/s", "% of peak"),
     True),
)


def rich_tables(df: pd.DataFrame, notes: dict[str, str]):
    """Narrow tables for a terminal: quality, speed, compute (measured rows only); then each status."""
    from rich.table import Table

    tables = []
    for title, cols, measured_only in RICH_TABLES:
        cols = [c for c in cols if c in df.columns]
        if title != "quality" and "FPS" not in df.columns:
            continue
        t = Table(title=f"personalive bench: {title}", title_justify="left", pad_edge=False)
        for c in cols:
            h = header(c).replace(c, SHORT.get(c, c))
            t.add_column(h, overflow="fold", justify="left" if c in ("method", "quality", "speed") else "right",
                         no_wrap=c == "method")
        for i in df.index:
            paper = df.at[i, "source"] != MEASURED
            if paper and measured_only:
                continue
            cells = [escape(df.at[i, c]) + ("†" if paper else "") if c == "method" else _cell(df, i, c, notes) for c in cols]
            t.add_row(*cells, style="dim italic" if paper else None)
        tables.append(t)
    extra = df[df["source"] == MEASURED]
    if "device" in df.columns and extra["device"].notna().any():
        r = extra[extra["device"].notna()].iloc[0]
        tables.append(f"speed on {r['device']} {r.get('dtype', '')} at {int(r['size'])}², memory = {r.get('mem kind', '')}")
    for _, r in extra.iterrows():
        where = f" [{int(r['videos'])} video(s); ID-SIM/FVD/FID set: {r['set']}]" if not pd.isna(r.get("videos", np.nan)) else ""
        note = f" ({r['note']})" if isinstance(r.get("note"), str) and r.get("note") else ""
        tables.append(f"{r['method']}: {r['status']}{where}{note}")
    return tables


def grouped_notes(notes: dict[str, str]) -> list[tuple[list[str], str]]:
    """Columns sharing one reason, once: ([LPIPS, tLP (self), tLP (cross)], 'alexnet... not found')."""
    groups: dict[str, list[str]] = {}
    for col, why in notes.items():
        groups.setdefault(why.split(": ", 1)[-1].replace("--weights-dir", "--metrics-weights"), []).append(col)
    return [(cols, why) for why, cols in groups.items()]


def plot(df: pd.DataFrame, out: Path, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    measured = df[df["source"] == MEASURED]
    ycol = next((c for c in ("LPIPS", "ID-SIM", "tLP (self)", "tLP (cross)", "FVD", "ID-SIM (dlib)", "FID")
                 if c in df.columns and measured[c].notna().any()), None)
    if ycol is None:
        ycol = "LPIPS"
    if "FPS" in df.columns:
        for _, r in df.iterrows():
            x, y = r.get("FPS"), r.get(ycol)
            if pd.isna(x) or pd.isna(y):
                continue
            paper = r["source"] != MEASURED
            ax1.scatter([x], [y], marker="o" if not paper else "s", facecolors="none" if paper else None,
                        edgecolors="C1" if paper else "C0", color=None if paper else "C0")
            ax1.annotate(r["method"] + (" (paper)" if paper else ""), (x, y), fontsize=8,
                         xytext=(4, 4), textcoords="offset points")
        ax1.set_xscale("log")
    ax1.set_xlabel("FPS (log)")
    ax1.set_ylabel(f"{ycol} {'↑' if HIGHER_IS_BETTER.get(ycol) else '↓'}")
    ax1.set_title("quality vs speed (hollow: paper)")
    drew = False
    for name in measured["method"]:
        from benchmarks.runner import safe_name

        p = out / "speed" / f"{safe_name(name)}.json"
        if p.is_file():
            times = json.loads(p.read_text()).get("step times") or []
            if times:
                ax2.plot(range(1, len(times) + 1), times, marker=".", label=name)
                drew = True
    paper_pl = df[(df["source"] != MEASURED) & (df["method"] == "PersonaLive")]
    if len(paper_pl) and not pd.isna(paper_pl.iloc[0].get("latency (s)")):
        ax2.axhline(paper_pl.iloc[0]["latency (s)"], ls="--", color="C1", label="PersonaLive (paper) 0.253 s")
        drew = True
    if drew:
        ax2.set_yscale("log")
        ax2.legend(fontsize=8)
    ax2.set_xlabel("timed step")
    ax2.set_ylabel("step time (s, log)")
    ax2.set_title("latency per step")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.part.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
