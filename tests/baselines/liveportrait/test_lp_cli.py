"""LivePortrait through the command line, as a user runs it (in-process: no pipe or signal involved)."""

from __future__ import annotations

import json

from helpers import invoke, probe


def run_cli(*args, env=None):
    return invoke(*args, env=env)


def test_animate_with_a_tiny_official_layout_folder(tmp_path, demo_ref, demo_drive):
    weights = tmp_path / "weights"
    r = run_cli("weights", "make-tiny", "liveportrait", weights)
    assert r.returncode == 0, r.stderr
    assert (weights / "liveportrait/base_models/spade_generator.pth").is_file()
    r = run_cli("weights", "check", "liveportrait", weights, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["status"] for row in rows] == ["ok"] * 5 + ["optional"] * 3

    out = tmp_path / "out.mp4"
    r = run_cli("animate", demo_ref, demo_drive, "--method", "liveportrait", "--weights", weights,
                "--frames", 8, "--size", 256, "-o", out)
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert (info["frames"], info["width"], info["height"]) == (8, 256, 256)
    # the crop fallback is said clearly
    assert "offline face detector" in r.stderr and "not found" in r.stderr
    assert r.stdout == ""


def test_damaged_folder_is_one_clear_line(tmp_path, lp_tiny_weights, demo_ref, demo_drive):
    import shutil

    weights = tmp_path / "w"
    shutil.copytree(lp_tiny_weights, weights)
    (weights / "liveportrait/base_models/warping_module.pth").write_bytes(b"not a checkpoint")
    r = run_cli("weights", "check", "liveportrait", weights)
    assert r.returncode == 1 and "warping_module.pth" in r.stderr
    r = run_cli("animate", demo_ref, demo_drive, "--method", "liveportrait", "--weights", weights,
                "--frames", 2, "--size", 256, "-o", tmp_path / "o.mp4")
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error:") and "warping_module.pth" in r.stderr
    assert "Traceback" not in r.stderr


def test_methods_lists_liveportrait_with_its_status(tmp_path, lp_tiny_weights):
    r = run_cli("methods", "--json", env={"LIVEPORTRAIT_WEIGHTS": str(tmp_path / "none")})
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    lp = rows["liveportrait"]
    assert lp["frames_per_step"] == 1 and not lp["ready"]
    assert any("weights download --method liveportrait" in n for n in lp["needs"])
    r = run_cli("methods", "--json", "--weights", lp_tiny_weights)
    lp = {row["name"]: row for row in json.loads(r.stdout)}["liveportrait"]
    assert lp["ready"] and "offline face detector" in lp["status"]
