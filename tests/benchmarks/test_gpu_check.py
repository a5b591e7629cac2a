"""benchmarks/gpu_check.sh on its CPU path with the tiny model: every step of the script runs and writes its
JSON and Markdown table (the GPU run is the same script with --device cuda)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # compiles the tiny model's networks: minutes on 2 cores
def test_gpu_check_script_on_the_cpu_path(tmp_path, shared_dir):
    out = tmp_path / "check"
    env_bin = str(Path(sys.executable).parent)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--device", "cpu", "--size",
                        "128", "--quick", "--tiny"], capture_output=True, text=True, cwd=ROOT, timeout=1800,
                       env={"PATH": f"{env_bin}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    names = {row["method"] for row in result["configurations"]}
    assert names == {"personalive[eager,full,fp32]", "personalive[compile,full,fp32]"}
    for row in result["configurations"]:
        assert row["FPS"] > 0 and row["frame latency (s)"] >= row["latency floor (s)"]
    assert [row["streams"] for row in result["multistream"]["rows"]] == [1, 4]
    table = (out / "gpu_check.md").read_text()
    assert "personalive[compile,full,fp32]" in table and "aggregate FPS" in table
