"""`personalive demo`: the bundled pair, from any folder, with no files of the user's own."""

from __future__ import annotations

from importlib.metadata import metadata
from pathlib import Path

from helpers import invoke, probe
from typer.testing import CliRunner

from personalive_cli.cli.app import app
from personalive_cli.demo import demo_files


def test_bundled_demo_is_small_and_attributed():
    portrait, driving = demo_files()
    assert portrait.is_file() and driving.is_file()
    assert portrait.stat().st_size + driving.stat().st_size < 400_000  # keeps the wheel light
    notice = (portrait.parent / "NOTICE").read_text()
    assert "GVCLab/PersonaLive" in notice and "Apache License" in notice
    meta = metadata("personalive")
    assert meta["License"] == "Apache-2.0" and "NOTICE" in meta.get_all("License-File")


def test_demo_still_from_an_empty_folder(tmp_path, monkeypatch):
    # the command as a user types it, in a folder holding nothing, with no ../shared beside it
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PERSONALIVE_WEIGHTS", raising=False)
    r = invoke("demo", "--method", "still")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.mp4"]
    info = probe(tmp_path / "demo.mp4")
    assert (info["frames"], info["width"], info["fps"]) == (100, 512, 25)
    assert "wrote demo.mp4" in r.stderr and r.stdout == ""


def test_demo_tiny_model(tmp_path, monkeypatch, tiny_weights):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["demo", "--weights", str(tiny_weights), "--size", "128", "--frames", "6",
                                 "-o", "tiny.mkv"])
    assert r.exit_code == 0, r.output
    info = probe(Path(tmp_path) / "tiny.mkv")
    assert (info["frames"], info["width"]) == (6, 128)
