"""Every bad input a user can type, as the user types it: exit status 1, exactly one ``error:`` line,
no traceback, nothing (not even a temporary file) left in the output folder, and no input touched.

Run in-process (Typer's runner): none of these cases is about pipes or signals. The media are made
here (PIL, PyAV, ffmpeg) from the demo bundled in the package; nothing is fetched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import write_video
from PIL import Image
from typer.testing import CliRunner

from personalive_cli.cli.app import app
from personalive_cli.demo import demo_files


@dataclass
class Case:
    args: Callable[[SimpleNamespace, Path], list]  # (media, output folder) -> command line
    needle: str                                    # must appear in the error line
    setup: Callable | None = None                  # (monkeypatch, media, output folder) -> None


def _readonly(m, out):
    if m.readonly is None:
        pytest.skip("no read-only folder can be made here (not root and chmod ignored, or mount refused)")
    return m.readonly


def _no_cuda(monkeypatch, m, out):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")


def _offline_hub(monkeypatch, m, out):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(out.parent / "hf_home"))
    monkeypatch.delenv("PERSONALIVE_WEIGHTS", raising=False)


def _no_psutil(monkeypatch, m, out):
    monkeypatch.setitem(sys.modules, "psutil", None)  # find_spec then reports it absent


def _no_ffmpeg(monkeypatch, m, out):
    monkeypatch.setenv("PERSONALIVE_FFMPEG", "")


def _link_to_drive(monkeypatch, m, out):
    (out / "link.mp4").symlink_to(m.drive)


STILL = ["--method", "still"]


def animate(ref, drive, out_name, *extra):
    """`personalive animate REF DRIVE -o OUT --method still ...` with attributes of the media resolved late."""
    return lambda m, o: ["animate", ref(m), drive(m), "-o", o / out_name if isinstance(out_name, str) else out_name(m, o),
                         *STILL, *extra]


REF = lambda m: m.ref  # noqa: E731
DRIVE = lambda m: m.drive  # noqa: E731

CASES: dict[str, Case] = {
    # the reference
    "missing reference": Case(animate(lambda m: m.dir / "nope.png", DRIVE, "o.mp4"), "reference image not found"),
    "empty reference": Case(animate(lambda m: m.empty_png, DRIVE, "o.mp4"), "cannot read reference image"),
    "truncated reference": Case(animate(lambda m: m.truncated_png, DRIVE, "o.mp4"), "cannot read reference image"),
    "text file as reference": Case(animate(lambda m: m.text_png, DRIVE, "o.mp4"), "cannot read reference image"),
    "no face in a non-square reference": Case(
        lambda m, o: ["animate", m.noface_wide, m.drive, "-o", o / "o.mp4", *STILL, "--crop", "auto"],
        "no face found in the reference"),
    "reference frame past the end": Case(
        animate(lambda m: m.drive, DRIVE, "o.mp4", "--reference-frame", "500", "--crop", "none"),
        "past the end"),
    "negative reference frame": Case(animate(lambda m: m.drive, DRIVE, "o.mp4", "--reference-frame", "-1"),
                                     "--reference-frame must be 0 or more"),
    # the driving video
    "missing driving video": Case(animate(REF, lambda m: m.dir / "nope.mp4", "o.mp4"), "driving video not found"),
    "empty driving video": Case(animate(REF, lambda m: m.empty_mp4, "o.mp4"), "cannot read video"),
    "text file named .mp4": Case(animate(REF, lambda m: m.text_mp4, "o.mp4"), "cannot read video"),
    "truncated driving video": Case(animate(REF, lambda m: m.truncated_mp4, "o.mp4", "--crop", "none"),
                                    "failed at frame 0"),
    "audio-only driving video": Case(animate(REF, lambda m: m.audio_only, "o.mp4"), "no video stream"),
    "driving video with zero frames": Case(animate(REF, lambda m: m.zero_frames, "o.mp4"), "no decodable video frames"),
    "no face in the driving video": Case(animate(REF, lambda m: m.noface_video, "o.mp4", "--crop", "auto"),
                                         "no face found"),
    # the output
    "output is the driving video": Case(animate(REF, DRIVE, lambda m, o: m.drive), "is also an input"),
    "output is a link to the driving video": Case(animate(REF, DRIVE, "link.mp4"), "is also an input",
                                                  setup=_link_to_drive),
    "output is the reference video": Case(
        lambda m, o: ["animate", m.drive, m.noface_video, "-o", m.drive, *STILL], "is also an input"),
    "output in a read-only folder": Case(animate(REF, DRIVE, lambda m, o: _readonly(m, o) / "o.mp4"),
                                         "cannot write into"),
    "output folder missing": Case(animate(REF, DRIVE, "missing/o.mp4"), "output folder does not exist"),
    "output is a folder": Case(animate(REF, DRIVE, lambda m, o: o), "is a folder"),
    "output named .txt": Case(animate(REF, DRIVE, "o.txt"), "use one of .mp4, .mov, .mkv, .webm"),
    "output named .gif": Case(animate(REF, DRIVE, "o.gif"), "use one of .mp4, .mov, .mkv, .webm"),
    # options
    "unknown method": Case(lambda m, o: ["animate", m.ref, m.drive, "-o", o / "o.mp4", "--method", "nosuch"],
                           "unknown method 'nosuch'"),
    "--frames 0": Case(animate(REF, DRIVE, "o.mp4", "--frames", "0"), "--frames must be at least 1"),
    "--size 100": Case(animate(REF, DRIVE, "o.mp4", "--size", "100"), "unsupported --size 100"),
    "--size 4096": Case(animate(REF, DRIVE, "o.mp4", "--size", "4096"), "unsupported --size 4096"),
    "--fps 0": Case(animate(REF, DRIVE, "o.mp4", "--fps", "0"), "--fps must be positive"),
    "--fps -5": Case(animate(REF, DRIVE, "o.mp4", "--fps", "-5"), "--fps must be positive"),
    "unknown crop mode": Case(animate(REF, DRIVE, "o.mp4", "--crop", "face"), "unknown crop mode"),
    "--device cuda without CUDA": Case(animate(REF, DRIVE, "o.mp4", "--device", "cuda"), "CUDA is not available",
                                       setup=_no_cuda),
    "unknown --option": Case(animate(REF, DRIVE, "o.mp4", "--option", "speed=11"), "has no option 'speed'"),
    "--vae on a method without one": Case(animate(REF, DRIVE, "o.mp4", "--vae", "tiny"), "no --vae option"),
    # weights
    "weights folder missing": Case(
        lambda m, o: ["animate", m.ref, m.drive, "-o", o / "o.mp4", "--method", "personalive", "--weights",
                      m.dir / "no_weights"], "weights folder not found"),
    "empty weights folder": Case(
        lambda m, o: ["animate", m.ref, m.drive, "-o", o / "o.mp4", "--method", "personalive", "--weights",
                      m.empty_dir], "not a PersonaLive weights folder"),
    "truncated weights file": Case(
        lambda m, o: ["animate", m.ref, m.drive, "-o", o / "o.mp4", "--method", "personalive", "--weights",
                      m.truncated_weights, "--size", "128", "--crop", "none"], "truncated"),
    "weights check of a missing folder": Case(lambda m, o: ["weights", "check", m.dir / "no_weights"],
                                              "weights folder not found"),
    "make-tiny into an existing file": Case(lambda m, o: ["weights", "make-tiny", m.text_png], "is a file"),
    "make-tiny into a read-only folder": Case(lambda m, o: ["weights", "make-tiny", _readonly(m, o) / "tiny"],
                                              "cannot write into"),
    # stream
    "stream unknown format": Case(lambda m, o: ["stream", "-r", m.ref, "-s", m.drive, *STILL, "--format", "png"],
                                  "unknown --format"),
    "stream --to the source": Case(lambda m, o: ["stream", "-r", m.ref, "-s", m.drive, *STILL, "--to", m.drive],
                                   "is also an input"),
    "stream --to a .txt file": Case(lambda m, o: ["stream", "-r", m.ref, "-s", m.drive, *STILL, "--to", o / "o.txt"],
                                    "use one of"),
    "stream --to without ffmpeg": Case(
        lambda m, o: ["stream", "-r", m.ref, "-s", m.drive, *STILL, "--crop", "none", "--size", "128",
                      "--to", o / "o.mp4"], "ffmpeg not found", setup=_no_ffmpeg),
    "stream with a clip-based method": Case(
        lambda m, o: ["stream", "-r", m.ref, "-s", m.drive, "--method", "x-portrait"], "cannot stream"),
    # demo
    "demo offline without weights": Case(lambda m, o: ["demo", "-o", o / "demo.mp4"], "personalive weights download",
                                         setup=_offline_hub),
    "demo into a .txt": Case(lambda m, o: ["demo", "-o", o / "demo.txt", *STILL], "use one of"),
    "demo with an unknown method": Case(lambda m, o: ["demo", "-o", o / "demo.mp4", "--method", "nosuch"],
                                        "unknown method"),
    # data prepare
    "prepare a missing folder": Case(lambda m, o: ["data", "prepare", "folder", m.dir / "nope", o / "dst"],
                                     "source folder not found"),
    "prepare where every input is bad": Case(
        lambda m, o: ["data", "prepare", "folder", m.bad_videos, o / "dst", "--crop", "none"],
        "no video could be prepared"),
    "prepare into a file": Case(lambda m, o: ["data", "prepare", "folder", m.good_videos, m.text_png],
                                "is a file"),
    "prepare into a read-only folder": Case(
        lambda m, o: ["data", "prepare", "folder", m.good_videos, _readonly(m, o) / "dst"], "cannot write into"),
    "prepare with a shard out of range": Case(
        lambda m, o: ["data", "prepare", "folder", m.good_videos, o / "dst", "--shard", "2/2"], "0 <= I < N"),
    "prepare with no workers": Case(
        lambda m, o: ["data", "prepare", "folder", m.good_videos, o / "dst", "--workers", "0"],
        "--workers must be at least 1"),
    "prepare videos without a face": Case(
        lambda m, o: ["data", "prepare", "folder", m.noface_videos, o / "dst", "--crop", "none", "--size", "128"],
        "without a face on the first frame"),
    "prepare boxes of a folder without clips": Case(lambda m, o: ["data", "prepare", "boxes", m.empty_dir],
                                                    "no clips in"),
    "prepare tubes with a bad line": Case(
        lambda m, o: ["data", "prepare", "talkinghead-1kh", m.bad_tubes, m.empty_dir, o / "dst"], "line 2"),
    "prepare tubes without their raw videos": Case(
        lambda m, o: ["data", "prepare", "talkinghead-1kh", m.tubes, m.empty_dir, o / "dst"],
        "none of the 1 raw videos"),
    # bench
    "bench an unknown method": Case(
        lambda m, o: ["bench", "--methods", "nosuch", "--speed", "--no-quality", "-o", o / "res"], "unknown method"),
    "bench an empty dataset": Case(
        lambda m, o: ["bench", "--methods", "still", "--dataset", m.empty_dir, "-o", o / "res"], "no videos"),
    "bench a missing dataset": Case(
        lambda m, o: ["bench", "--methods", "still", "--dataset", m.dir / "nope", "-o", o / "res"],
        "dataset not found"),
    "bench without its extra": Case(
        lambda m, o: ["bench", "--methods", "still", "--speed", "--no-quality", "-o", o / "res"],
        "pip install 'personalive[bench]'", setup=_no_psutil),
}


@contextlib.contextmanager
def _readonly_folder(base: Path):
    """A folder no file can be created in: chmod where that binds, else (as root, who ignores modes)
    a read-only tmpfs; None when neither is possible."""
    folder = base / "readonly"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    try:
        yield folder if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory, ffmpeg, tiny_weights):
    d = tmp_path_factory.mktemp("bad_media")
    ref, drive = demo_files()
    m = SimpleNamespace(dir=d, ref=d / "ref.jpg", drive=d / "drive.mp4")
    shutil.copy(ref, m.ref)
    # 12 frames of the demo clip: enough for every case, quick to decode
    subprocess.run([ffmpeg, "-loglevel", "error", "-i", str(drive), "-frames:v", "12", "-c:v", "libx264",
                    str(m.drive)], check=True)
    m.empty_png = d / "empty.png"
    m.empty_png.write_bytes(b"")
    m.truncated_png = d / "truncated.png"
    Image.open(ref).save(d / "full.png")
    m.truncated_png.write_bytes((d / "full.png").read_bytes()[:2000])
    m.text_png = d / "text.png"
    m.text_png.write_text("not an image\n")
    m.empty_mp4 = d / "empty.mp4"
    m.empty_mp4.write_bytes(b"")
    m.text_mp4 = d / "text.mp4"
    m.text_mp4.write_text("hello\n" * 100)
    m.truncated_mp4 = d / "truncated.mp4"
    m.truncated_mp4.write_bytes(drive.read_bytes()[:3000])
    m.audio_only = d / "audio.m4a.mp4"
    subprocess.run([ffmpeg, "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440", "-t", "1",
                    str(m.audio_only)], check=True)
    m.zero_frames = d / "zero.y4m"
    m.zero_frames.write_bytes(b"YUV4MPEG2 W64 H64 F25:1 Ip A1:1 C420jpeg\n")
    rng = np.random.default_rng(0)
    m.noface_video = write_video(d / "noface.mp4", [rng.integers(0, 40, (96, 128, 3), np.uint8) for _ in range(40)])
    m.noface_wide = d / "noface_wide.png"
    Image.fromarray(rng.integers(0, 40, (96, 160, 3), np.uint8)).save(m.noface_wide)
    m.empty_dir = d / "empty_dir"
    m.empty_dir.mkdir()
    m.truncated_weights = d / "truncated_weights"
    shutil.copytree(tiny_weights, m.truncated_weights)
    unet = m.truncated_weights / "personalive" / "pose_guider.pth"
    unet.write_bytes(unet.read_bytes()[:100])
    m.bad_videos = d / "bad_videos"
    m.bad_videos.mkdir()
    (m.bad_videos / "a.mp4").write_text("not a video")
    (m.bad_videos / "b.mp4").write_bytes(b"")
    m.noface_videos = d / "noface_videos"
    m.noface_videos.mkdir()
    shutil.copy(m.noface_video, m.noface_videos / "noise.mp4")
    m.tubes = d / "train_video_tubes.txt"
    m.tubes.write_text("abcdefghijk_0000,1080,1920,0,50,700,80,1180,560\n")
    m.bad_tubes = d / "small_video_tubes.txt"
    m.bad_tubes.write_text("abcdefghijk_0000,1080,1920,0,50,700,80,1180,560\nabcdefghijk_0001,1080,1920\n")
    m.good_videos = d / "good_videos"
    m.good_videos.mkdir()
    shutil.copy(m.drive, m.good_videos / "clip.mp4")
    with _readonly_folder(d) as readonly:
        m.readonly = readonly
        yield m


def _state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime (temporary and hidden files included)."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in folder.rglob("*") if p.name != "hf_home" and "hf_home" not in p.parts}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, media, tmp_path, monkeypatch):
    case = CASES[name]
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(tmp_path)
    if case.setup:
        case.setup(monkeypatch, media, out)
    args = [str(a) for a in case.args(media, out)]
    before, inputs_before = _state(out), _state(media.dir)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, (r.exit_code, r.output)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert case.needle in errors[0], errors[0]
    assert _state(out) == before, "the output folder changed"
    assert _state(media.dir) == inputs_before, "an input was touched"
    assert r.stdout == ""
    print(f"\nCASE|{name}|personalive {' '.join(_shown(a, media, out) for a in args)}|{r.exit_code}|{errors[0]}")


def _shown(arg: str, media: SimpleNamespace, out: Path) -> str:
    """A command-line word as the closing table shows it (temporary folders shortened)."""
    return arg.replace(str(media.dir) + "/", "").replace(str(out) + "/", "out/").replace(str(out), "out")


def test_at_least_35_cases():
    assert len(CASES) >= 35
