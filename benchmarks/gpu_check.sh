#!/usr/bin/env bash
# The speed check of one GPU machine, in one go (issue "Speed"): full-size random weights, every configuration
# of the stream step at 512², 4 steps, then several streams batched; one JSON + Markdown table under OUT.
#
#   bash benchmarks/gpu_check.sh [OUT] [--device cuda] [--size 512] [--quick]
#   bash benchmarks/gpu_check.sh /tmp/check --device cpu --size 128 --quick     # the CPU path, to test the script
#   bash benchmarks/gpu_check.sh /tmp/check --device cpu --size 128 --quick --tiny   # tiny random model (seconds)
#
# Needs the repo installed (pip install -e ".[bench]"). Budget on an H100/H200: under 8 minutes (compilation of
# the compiled configurations is most of it; `--quick` keeps only eager / compile+graphs and N = 1, 4).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check}
shift || true
DEVICE=cuda SIZE=512 QUICK=0 PRESET=full
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --tiny) PRESET=tiny; shift ;;
        *) echo "error: unknown option $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
python - <<PY > "$OUT/machine.json"
import json, platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
print(json.dumps({"device": "$DEVICE", "gpu": gpu, "torch": torch.__version__, "cpu": platform.processor(),
                  "threads": torch.get_num_threads()}))
PY
if [ "$DEVICE" = cuda ]; then
    DTYPES="fp16 bf16"; COMPILED="eager compile compile+graphs"
else
    DTYPES="fp32 bf16"; COMPILED="eager compile"
fi
STREAMS=1,2,4,8 STEPS=20 WARMUP=3
if [ "$QUICK" = 1 ]; then
    DTYPES=${DTYPES%% *}; COMPILED="eager ${COMPILED##* }"; STREAMS=1,4; STEPS=4; WARMUP=1
fi
VAES="full tiny"
[ "$PRESET" = tiny ] && VAES=full  # make-tiny writes no TAESD
CONFIGS=""
for c in $COMPILED; do for v in $VAES; do for d in $DTYPES; do CONFIGS="$CONFIGS${CONFIGS:+;}$c,$v,$d"; done; done; done
echo "configurations: $CONFIGS" >&2
if [ "$PRESET" = tiny ]; then
    rm -rf "$OUT/tiny-weights" && personalive weights make-tiny "$OUT/tiny-weights"
    WEIGHTS=(--weights "$OUT/tiny-weights")
else
    WEIGHTS=(--random-weights)
fi
# 1. every configuration, real-time paced at 25 fps input (frame latency beside the schedule's floor)
personalive bench --methods personalive --speed --no-quality "${WEIGHTS[@]}" --size "$SIZE" --device "$DEVICE" \
    --configs "$CONFIGS" --warmup "$WARMUP" --steps "$STEPS" --pace-fps 25 --output "$OUT/bench"
# 2. several streams on one device, batched into one UNet pass
DT=$([ "$DEVICE" = cuda ] && echo fp16 || echo fp32)
python -m benchmarks.multistream --preset "$PRESET" --device "$DEVICE" --dtype "$DT" --size "$SIZE" --streams "$STREAMS" \
    --steps "$([ "$QUICK" = 1 ] && echo 2 || echo 10)" --warmup 1 --json "$OUT/multistream.json"
# 3. one JSON + one Markdown table
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
bench = json.loads((out / "bench" / "results.json").read_text())
multi = json.loads((out / "multistream.json").read_text())
machine = json.loads((out / "machine.json").read_text())
rows = [r for r in bench["rows"] if r.get("source") == "measured"]
(out / "gpu_check.json").write_text(json.dumps({"machine": machine, "configurations": rows, "multistream": multi}, indent=1))
cols = ["method", "FPS", "latency (s)", "step p95 (s)", "frame latency (s)", "frame latency p95 (s)", "latency floor (s)",
        "warm-up (s)", "peak mem (GiB)", "TFLOP/s", "% of peak"]
def cell(v):
    return f"{v:.4g}" if isinstance(v, float) else ("–" if v is None else str(v))
lines = [f"# gpu_check on {machine['gpu'] or machine['device']} (torch {machine['torch']})", "",
         "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
lines += ["", "| streams | aggregate FPS | per-stream FPS | step p50 (s) | step p95 (s) | peak mem (GiB) |", "|---|---|---|---|---|---|"]
lines += [f"| {r['streams']} | {r['aggregate FPS']:.4g} | {r['per-stream FPS']:.4g} | {r['step p50 (s)']:.4g} | "
          f"{r['step p95 (s)']:.4g} | {cell(r.get('peak mem (GiB)'))} |" for r in multi["rows"]]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "wrote $OUT/gpu_check.json and $OUT/gpu_check.md" >&2
