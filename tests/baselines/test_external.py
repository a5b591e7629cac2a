"""The subprocess adapters (X-Portrait, Follow-Your-Emoji, MegActor-Σ): configuration, status, input
conversions, and each adapter's contract against a stand-in script (a TEST DOUBLE that mimics the
upstream command line and writes a video; never registered as the method)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import invoke, make_driving_with_audio, probe, process_alive

from personalive_cli import registry
from personalive_cli.errors import UserError

STANDINS = Path(__file__).parent / "standins"
ADAPTERS = ("x-portrait", "follow-your-emoji", "megactor-sigma")
FYE_TASK_IN_MIRROR = Path("/work/.mirror/mayuelala+FollowYourEmoji/repo")


@pytest.fixture(autouse=True)
def isolated_config(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONALIVE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("STANDIN_DIR", str(STANDINS))
    monkeypatch.setenv("STANDIN_RECORD", str(tmp_path / "record.json"))
    return tmp_path / "config"


def fake_repo(root: Path, name: str) -> Path:
    """A checkout whose entry point is the stand-in script (plus the config files the adapter reads)."""
    repo = root / f"{name}-repo"
    if name == "x-portrait":
        (repo / "core").mkdir(parents=True)
        (repo / "config").mkdir()
        (repo / "config/cldm_v15_appearance_pose_local_mm.yaml").write_text("model: {}\n")
        shutil.copy(STANDINS / "xportrait_standin.py", repo / "core/test_xportrait.py")
    elif name == "follow-your-emoji":
        (repo / "configs").mkdir(parents=True)
        (repo / "configs/infer.yaml").write_text("video_length: 16\n"
                                                 "base_model_path: 'pretrained_models/sd-image-variations-diffusers'\n"
                                                 "init_checkpoint: 'pretrained_models/follow-your-emoji'\n")
        shutil.copy(STANDINS / "fye_standin.py", repo / "infer.py")
    else:
        (repo / "configs/inference/megactor-sigma").mkdir(parents=True)
        (repo / "configs/inference/megactor-sigma/inference.yaml").write_text(
            'pretrained_model_path: "./weights/StableDiffusion"\n'
            'appearance_controlnet_motion_checkpoint_path: "./weights/megactor-sigma.ckpt"\n'
            'size: [64, 64]\n')
        shutil.copy(STANDINS / "megactor_standin.py", repo / "eval_audio.py")
    return repo


def recorded(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "record.json").read_text())


def run_cli(*args, env=None):
    return invoke(*args, env=env)  # in-process: the upstream stand-ins are the only subprocesses here


def test_methods_lists_all_six_with_setup_steps():
    r = run_cli("methods", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) >= {"personalive", "liveportrait", "x-portrait", "follow-your-emoji", "megactor-sigma", "still"}
    for name in ADAPTERS:
        assert rows[name]["ready"] is False and rows[name]["status"].startswith("not configured")
        assert any(s.startswith("git clone https://github.com/") for s in rows[name]["needs"])
        assert rows[name]["needs"][-1].startswith(f"personalive methods configure {name} --repo REPO --python")


def test_configure_validates_and_persists(tmp_path, isolated_config):
    from baselines.external import configure, load_configs

    repo = fake_repo(tmp_path, "x-portrait")
    weights = tmp_path / "model_state-415001.th"
    weights.write_bytes(b"x")
    with pytest.raises(UserError, match="not a folder"):
        configure("x-portrait", tmp_path / "nope", sys.executable, weights)
    with pytest.raises(UserError, match="has no infer.py"):
        configure("follow-your-emoji", repo, sys.executable)
    with pytest.raises(UserError, match="not an executable"):
        configure("x-portrait", repo, tmp_path / "python-nope", weights)
    with pytest.raises(UserError, match="needs --weights"):
        configure("x-portrait", repo, sys.executable)
    with pytest.raises(UserError, match="not a method that runs upstream code"):
        configure("liveportrait", repo, sys.executable)
    path = configure("x-portrait", repo, sys.executable, weights)
    assert path == isolated_config / "methods.json"
    assert load_configs()["x-portrait"].repo == str(repo.resolve())
    status = registry.get("x-portrait").status()
    assert status.ready and str(repo.resolve()) in status.detail
    shutil.rmtree(repo)
    broken = registry.get("x-portrait").status()
    assert not broken.ready and "broken" in broken.detail


def test_configure_command_line(tmp_path, isolated_config):
    repo = fake_repo(tmp_path, "megactor-sigma")
    r = run_cli("methods", "configure", "megactor-sigma", "--repo", repo, "--python", sys.executable)
    assert r.returncode == 0, r.stderr
    assert "configured" in r.stderr
    r = run_cli("methods", "--json")
    row = {x["name"]: x for x in json.loads(r.stdout)}["megactor-sigma"]
    assert row["ready"] is True
    r = run_cli("methods", "configure", "megactor-sigma", "--repo", tmp_path / "none", "--python", sys.executable)
    assert r.returncode == 1 and r.stderr.startswith("error:")


def test_unconfigured_method_gets_no_speed_numbers():
    from benchmarks.speed import SpeedOptions, measure_method

    ref = np.zeros((128, 128, 3), np.uint8)
    row = measure_method("megactor-sigma", SpeedOptions(size=128, device="cpu", random_weights=True, warmup=0, steps=1),
                         ref)
    assert "not configured" in row["status"]
    assert not any(k for k in row if "FPS" in k or "lat" in k)


def test_x_portrait_contract(tmp_path, demo_ref, demo_drive):
    repo = fake_repo(tmp_path, "x-portrait")
    weights = tmp_path / "model_state-415001.th"
    weights.write_bytes(b"x")
    r = run_cli("methods", "configure", "x-portrait", "--repo", repo, "--python", sys.executable, "--weights", weights)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out.mp4"
    r = run_cli("animate", demo_ref, demo_drive, "--method", "x-portrait", "--frames", 6, "--size", 256,
                "--crop", "none", "-o", out)
    assert r.returncode == 0, r.stderr
    assert (probe(out)["frames"], probe(out)["width"]) == (6, 256)
    rec = recorded(tmp_path)
    assert rec["best_frame"] == -1 and rec["out_frames"] == 0 and rec["ddim_steps"] == 30
    assert rec["rendered_frames"] == 6  # every driving frame rendered (upstream: -1 would drop the last)
    assert rec["uc_scale"] == 5 and rec["num_mix"] == 4 and rec["resume_dir"] == str(weights.resolve())
    assert rec["driving_frames"] == 6 and Path(rec["cwd"]) == repo.resolve()
    method = registry.get("x-portrait")(size=128, align=False)
    assert method.best_frame == -2


def test_follow_your_emoji_contract(tmp_path, monkeypatch):
    import baselines.follow_your_emoji as fye

    repo = fake_repo(tmp_path, "follow-your-emoji")
    weights = tmp_path / "pretrained"
    weights.mkdir()
    from baselines.external import configure

    configure("follow-your-emoji", repo, sys.executable, weights)
    calls = []

    def fake_template(frames, task_model, repeat_first=True):  # the real conversion is tested below
        calls.append((len(frames), Path(task_model)))
        out = np.empty(len(frames) + 1, dtype=object)
        out[:] = [{"lmks": np.zeros((478, 3)), "frame": i} for i in range(len(frames) + 1)]
        return out

    monkeypatch.setattr(fye, "landmark_template", fake_template)
    method = registry.get("follow-your-emoji")(size=128, seed=3)
    session = method.start(np.full((200, 200, 3), 120, np.uint8))
    assert list(session.push(np.zeros((5, 128, 128, 3), np.uint8))) == []  # clip-based: nothing until flush
    outs = list(session.flush())
    assert len(outs) == 5 and outs[0].shape == (128, 128, 3)
    assert calls == [(5, repo.resolve() / fye.TASK_MODEL)]
    rec = recorded(tmp_path)
    assert rec["template_len"] == 6 and rec["seed"] == 3 and len(rec["images"]) == 1
    assert rec["video_length"] == 5  # the upstream generates the config's video_length frames, not the template's
    config = yaml.safe_load(rec["config"])
    # the weights folder replaces pretrained_models/
    assert config["init_checkpoint"] == f"{weights.resolve()}/follow-your-emoji"
    assert (repo / "configs/infer.yaml").read_text().startswith("video_length: 16\n")  # the checkout is untouched

    configure("follow-your-emoji", repo, sys.executable)  # without --weights: still a copy with the clip's length
    session = registry.get("follow-your-emoji")(size=64).start(np.full((200, 200, 3), 120, np.uint8))
    list(session.push(np.zeros((20, 64, 64, 3), np.uint8)))
    assert len(list(session.flush())) == 20
    rec = recorded(tmp_path)
    assert rec["video_length"] == 20 and rec["template_len"] == 21
    # relative to the repo, the working folder
    assert yaml.safe_load(rec["config"])["init_checkpoint"] == "pretrained_models/follow-your-emoji"
    assert Path(rec["config_path"]).parent != repo / "configs"


def test_follow_your_emoji_config_for_clip():
    from baselines.follow_your_emoji import config_for_clip

    text = "video_length: 16  # frames\nmodel:\n  kw:\n    temporal_position_encoding_max_len: 32\n"
    out = config_for_clip(text, 40)
    assert out.splitlines()[0] == "video_length: 40"  # key order kept
    assert yaml.safe_load(out) == {"video_length": 40,
                                   "model": {"kw": {"temporal_position_encoding_max_len": 32}}}
    assert config_for_clip("seed: 1\n", 7) == "seed: 1\nvideo_length: 7\n"
    # quoted or not, nested or in a list: every pretrained_models/ path moves into the weights folder
    text = "a: 'pretrained_models/x'\nb: pretrained_models/y\nc: {d: [\"pretrained_models/z\", other/p]}\n"
    assert yaml.safe_load(config_for_clip(text, 3, "/w/")) == {
        "a": "/w/x", "b": "/w/y", "c": {"d": ["/w/z", "other/p"]}, "video_length": 3}
    with pytest.raises(UserError, match="not the mapping"):
        config_for_clip("- a\n- b\n", 3)


def test_megactor_contract_without_and_with_audio(tmp_path, demo_drive, ffmpeg):
    from baselines.external import configure

    repo = fake_repo(tmp_path, "megactor-sigma")
    weights = tmp_path / "weights"
    weights.mkdir()
    configure("megactor-sigma", repo, sys.executable, weights)
    levels = 30 + (np.arange(70) % 7) * 10  # 2.8 s at 25 fps > 2.5 s; each frame one grey level
    frames = np.broadcast_to(levels[:, None, None, None], (70, 96, 96, 3)).astype(np.uint8)
    method = registry.get("megactor-sigma")(size=96)
    session = method.start(np.full((64, 64, 3), 90, np.uint8))
    list(session.push(frames))
    outs = list(session.flush())
    assert len(outs) == 70 and outs[0].shape == (96, 96, 3)
    # the stand-in's result panel is 255 - its driving frame: output i is driving frame i (the upstream leaves
    # out frame 0, whose place the first result takes), the whole frame is the result panel (no gap, no other panel)
    expected = np.concatenate([[255 - levels[1]], 255 - levels[1:]])
    got = np.array([o.astype(float).mean() for o in outs])
    assert np.abs(got - expected).max() < 4, np.round(got - expected)
    assert min(float(o.min()) for o in outs) > 150
    rec = recorded(tmp_path)
    assert rec["no_audio"] is True and rec["limit"] * 25 >= 70  # the 2.5 s default raised to the whole clip
    assert rec["audio_seconds"] == pytest.approx(70 / 25, abs=0.05)  # a silent track: upstream needs one
    config = yaml.safe_load(rec["config_text"])
    ckpt = config["appearance_controlnet_motion_checkpoint_path"]
    assert ckpt == f"{weights.resolve()}/megactor-sigma.ckpt"
    assert config["size"] == [64, 64]

    drive = make_driving_with_audio(ffmpeg, demo_drive, tmp_path / "drive.mp4", "25", 4, size=64)
    method = registry.get("megactor-sigma")(size=96, audio=drive, audio_start=1.0)
    session = method.start(np.full((64, 64, 3), 90, np.uint8))
    list(session.push(frames[:50]))
    assert len(list(session.flush())) == 50
    rec = recorded(tmp_path)
    assert rec["no_audio"] is False and rec["audio_seconds"] == pytest.approx(2.0, abs=0.05)
    assert rec["guidance_scale"] == 2.0 and rec["num_steps"] == 25


def test_megactor_result_panel():
    from baselines.megactor_sigma import result_panel

    row = np.zeros((516, 4 * 514 + 2, 3), np.uint8)
    row[2:514, 3 * 514 + 2:3 * 514 + 2 + 512] = 200
    panel = result_panel(row)
    assert panel.shape == (512, 512, 3) and panel.min() == 200
    with pytest.raises(UserError, match="row of 4 panels"):
        result_panel(np.zeros((512, 512, 3), np.uint8))


def test_external_session_collects_steps_and_invocation_is_abstract(tmp_path):
    from baselines.external import ExternalMethod, configure

    assert ExternalMethod.__abstractmethods__ == {"invocation"}
    configure("megactor-sigma", fake_repo(tmp_path, "megactor-sigma"), sys.executable)
    session = registry.get("megactor-sigma")(size=64).start(np.zeros((64, 64, 3), np.uint8))
    assert list(session.step(np.zeros((16, 64, 64, 3), np.uint8))) == []  # collected, run at flush
    assert session.push(np.zeros((64, 64, 3), np.uint8)) == [] and len(session.frames) == 17
    with pytest.raises(UserError, match="must be 64×64"):
        session.push(np.zeros((32, 32, 3), np.uint8))


def test_upstream_failure_is_one_clear_error(tmp_path):
    import tempfile

    from baselines.external import configure

    repo = fake_repo(tmp_path, "megactor-sigma")
    (repo / "eval_audio.py").write_text("import sys\nprint('CUDA out of memory')\nsys.exit(3)\n")
    configure("megactor-sigma", repo, sys.executable)
    session = registry.get("megactor-sigma")(size=64).start(np.zeros((64, 64, 3), np.uint8))
    list(session.push(np.zeros((3, 64, 64, 3), np.uint8)))
    before = set(Path(tempfile.gettempdir()).glob("personalive-megactor-sigma-*"))
    with pytest.raises(UserError, match="exited with status 3: CUDA out of memory"):
        list(session.flush())
    assert set(Path(tempfile.gettempdir()).glob("personalive-megactor-sigma-*")) == before  # work folder removed


@pytest.fixture(scope="module")
def fye_task_model(tmp_path_factory):
    """The FaceLandmarker model Follow-Your-Emoji ships (media_pipe/mp_models/...task): from
    $FYE_TASK_MODEL, else a local mirror of the repo; skip when neither is here."""
    env = os.environ.get("FYE_TASK_MODEL")
    if env and Path(env).is_file():
        return Path(env)
    if FYE_TASK_IN_MIRROR.is_dir():
        out = tmp_path_factory.mktemp("fye") / "face_landmarker.task"
        blob = subprocess.run(["git", "--git-dir", str(FYE_TASK_IN_MIRROR), "show",
                               "HEAD:media_pipe/mp_models/face_landmarker_v2_with_blendshapes.task"], capture_output=True)
        if blob.returncode == 0 and len(blob.stdout) > 1_000_000:
            out.write_bytes(blob.stdout)
            return out
    pytest.skip("Follow-Your-Emoji's face_landmarker_v2_with_blendshapes.task is not available (set FYE_TASK_MODEL)")


def test_follow_your_emoji_template_from_the_demo_video(demo_drive, fye_task_model):
    from baselines.follow_your_emoji import landmark_template
    from personalive_cli.io.video import VideoReader

    frames = list(VideoReader(demo_drive).iter_frames(0, 4))
    template = landmark_template(frames, fye_task_model)
    assert template.dtype == object and len(template) == 5  # the first frame repeated (the upstream drops it)
    assert template[0] is template[1]
    for rec in template:
        assert set(rec) == {"lmks", "lmks3d", "trans_mat", "faces", "bs", "width", "height"}
        assert rec["lmks"].shape == (478, 3) and rec["lmks3d"].shape == (468, 3)
        assert rec["trans_mat"].shape == (4, 4) and np.allclose(rec["trans_mat"][3], [0, 0, 0, 1])
        assert len(rec["bs"]) == 51 and rec["faces"].shape[1] == 3
        assert (rec["width"], rec["height"]) == frames[0].shape[1::-1]
        assert 0.2 < rec["lmks"][:, 0].mean() < 0.8 and 0.2 < rec["lmks"][:, 1].mean() < 0.8
    # the face moves between frames; the canonical mesh is metric (centimetres), not normalised
    assert not np.array_equal(template[1]["lmks"], template[4]["lmks"])
    assert np.ptp(template[1]["lmks3d"][:, 0]) > 5


HANGING_UPSTREAM = """import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(os.environ["PID_FILE"] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.replace(os.environ["PID_FILE"] + ".tmp", os.environ["PID_FILE"])
print("started", flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    return process_alive(pid)


@pytest.fixture
def hanging_megactor(tmp_path, monkeypatch):
    """A megactor-sigma whose upstream starts a child and never finishes; work folders go to tmp_path/tmp."""
    import tempfile

    from baselines.external import configure

    repo = fake_repo(tmp_path, "megactor-sigma")
    (repo / "eval_audio.py").write_text(HANGING_UPSTREAM)
    configure("megactor-sigma", repo, sys.executable)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("PID_FILE", str(tmp_path / "pids"))
    return tmp_path


def _assert_group_gone_and_no_workdir(root: Path) -> None:
    pids = [int(p) for p in (root / "pids").read_text().split()]
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, "an upstream process survived"
        time.sleep(0.05)
    assert list((root / "tmp").iterdir()) == []


def test_upstream_timeout_kills_its_process_group_and_removes_the_work_folder(hanging_megactor):
    session = registry.get("megactor-sigma")(size=64, timeout=1.5).start(np.zeros((64, 64, 3), np.uint8))
    list(session.push(np.zeros((3, 64, 64, 3), np.uint8)))
    with pytest.raises(UserError, match=r"did not finish within 1.5 s: started"):
        list(session.flush())
    _assert_group_gone_and_no_workdir(hanging_megactor)


def test_interrupted_upstream_is_killed_with_its_children(hanging_megactor):
    session = registry.get("megactor-sigma")(size=64).start(np.zeros((64, 64, 3), np.uint8))
    list(session.push(np.zeros((3, 64, 64, 3), np.uint8)))
    pid_file = hanging_megactor / "pids"

    def interrupt_once_started():
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the upstream, in its own session, does not get it

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        list(session.flush())
    _assert_group_gone_and_no_workdir(hanging_megactor)


def test_sigterm_interrupts_only_while_an_upstream_runs():
    from baselines.external import _sigterm_interrupts

    before = signal.getsignal(signal.SIGTERM)
    if before != signal.SIG_DFL:
        pytest.skip("a SIGTERM handler is installed already")
    with pytest.raises(KeyboardInterrupt), _sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
