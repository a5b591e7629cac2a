"""Training test fixtures: a small DATA folder cut from the packaged demo (hand-made boxes, for the dataset
tests), a synthetic DATA folder, and one tiny Stage-I run that several tests read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fake_training_data import RUN_STEPS, TINY_ARGS, write_dataset
from helpers import invoke, write_video
from PIL import Image

from personalive_cli.io.video import VideoReader
from personalive_cli.training.clips import ClipBoxes, TrainClip, write_train_manifest

PACKAGED_DEMO = Path(__file__).resolve().parents[2] / "personalive_cli" / "demo" / "driving.mp4"
SIDE = 128


def _plausible_boxes(n: int, side: int = SIDE, detected_first: bool = True) -> ClipBoxes:
    """A face box in the centre region drifting a little, eyes and mouth inside it."""
    t = np.arange(n, dtype=np.float32)[:, None]
    drift = np.hstack([np.sin(t / 7), np.cos(t / 9)]) * side * 0.03

    def box(x1, y1, x2, y2):
        b = np.array([[x1, y1, x2, y2]], np.float32) * side
        return (b + np.hstack([drift, drift])).astype(np.float32)

    detected = np.ones(n, bool)
    detected[0] = detected_first
    return ClipBoxes(face=box(0.3, 0.25, 0.7, 0.75), left_eye=box(0.36, 0.4, 0.46, 0.46),
                     right_eye=box(0.54, 0.4, 0.64, 0.46), mouth=box(0.42, 0.6, 0.58, 0.68),
                     detected=detected)


@pytest.fixture(scope="session")
def demo_frames() -> list[np.ndarray]:
    frames = []
    for frame in VideoReader(PACKAGED_DEMO).iter_frames(0, 80):
        frames.append(np.asarray(Image.fromarray(frame).resize((SIDE, SIDE), Image.BILINEAR)))
    return frames


def _add_clip(root: Path, clip_id: str, frames: list[np.ndarray] | None, n: int, split: str = "train",
             boxes: ClipBoxes | None = None) -> TrainClip:
    """Write videos/<id>.mp4 (or garbage bytes when ``frames`` is None) and boxes/<id>.npz."""
    (root / "videos").mkdir(exist_ok=True)
    (root / "boxes").mkdir(exist_ok=True)
    video = root / "videos" / f"{clip_id}.mp4"
    if frames is None:
        video.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 50)
    else:
        write_video(video, frames[:n])
    (boxes or _plausible_boxes(n)).save(root / "boxes" / f"{clip_id}.npz")
    return TrainClip(id=clip_id, video=f"videos/{clip_id}.mp4", boxes=f"boxes/{clip_id}.npz", frames=n,
                     size=SIDE, fps=25.0, split=split, source="test")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, demo_frames) -> Path:
    """Two good clips: 80 frames (the 30-frame margin applies) and 40 frames (too short for it)."""
    root = tmp_path_factory.mktemp("data")
    clips = [_add_clip(root, "long", demo_frames, 80), _add_clip(root, "short", demo_frames[20:], 40)]
    write_train_manifest(root / "train_manifest.csv", clips)
    return root


@pytest.fixture(scope="session")
def add_clip():
    """``add_clip(root, id, frames | None, n, split="train", boxes=None) -> TrainClip``"""
    return _add_clip


@pytest.fixture(scope="session")
def plausible_boxes():
    """``plausible_boxes(n, side=128, detected_first=True) -> ClipBoxes``"""
    return _plausible_boxes


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> Path:
    """DATA/ with two 24-frame 128² synthetic clips (manifest, videos, boxes)."""
    return write_dataset(tmp_path_factory.mktemp("train_data") / "DATA")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory, demo_drive) -> Path:
    """The shared demo video prepared into a training DATA folder as a user does it (`data prepare folder`:
    face crops, FaceMesh boxes, train_manifest.csv), 48 frames at 128² to stay quick."""
    src = tmp_path_factory.mktemp("raw")
    (src / "demo.mp4").symlink_to(demo_drive)
    data = tmp_path_factory.mktemp("demo_data") / "DATA"
    r = invoke("data", "prepare", "folder", src, data, "--size", 128, "--max-frames", 48)
    assert r.returncode == 0, r.stderr
    return data


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, demo_data, tiny_weights) -> Path:
    """A 4-step tiny run on the prepared demo, started from the official-layout tiny weights, as a user types it."""
    run = tmp_path_factory.mktemp("runs") / "RUN"
    r = invoke("train", "stage1", demo_data, "--output", run, "--init", tiny_weights, "--max-steps", RUN_STEPS,
               *TINY_ARGS)
    assert r.returncode == 0, r.stderr
    assert f"trained to step {RUN_STEPS}" in r.stderr
    return run


@pytest.fixture(scope="session")
def stage2_run(tmp_path_factory, demo_data, tiny_run) -> Path:
    """3 Stage II steps on the prepared demo from the Stage I run `tiny_run`, as a user types it (checkpoint and
    validation at 3; validation at 0 too). Shared by the Stage II, Stage III and three-stage tests."""
    run = tmp_path_factory.mktemp("stage2") / "RUN2"
    r = invoke("train", "stage2", demo_data, "--output", run, "--init", tiny_run, "--max-steps", 3, "--preset",
               "tiny", "--set", "log_with=none", "--set", "checkpoint_every=3", "--set", "validate_every=3")
    assert r.returncode == 0, r.stderr
    assert "trained to step 3" in r.stderr
    return run


@pytest.fixture(scope="session")
def stage3_run(tmp_path_factory, demo_data, stage2_run) -> Path:
    """Two Stage III steps from `stage2_run`; the discriminator is not updated (discriminator_after), so the one
    the run holds is the one it started from."""
    run = tmp_path_factory.mktemp("stage3") / "RUN3"
    r = invoke("train", "stage3", demo_data, "--output", run, "--init", stage2_run, "--preset", "tiny",
               "--max-steps", 2, "--set", "discriminator_after=1000")
    assert r.returncode == 0, r.stderr
    assert "trained to step 2" in r.stderr
    assert "discriminator: from run" in r.stderr and "random initialisation" not in r.stderr, r.stderr
    return run
