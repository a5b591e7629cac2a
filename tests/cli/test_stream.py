"""`personalive stream` in shell pipelines, as users run it: a real process where pipes or signals are
the point, in-process (``helpers.invoke``) for the rest."""

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import invoke, probe, write_video

CLI = [sys.executable, "-m", "personalive_cli.cli.app"]


def test_stream_y4m_into_ffmpeg(tmp_path, demo_ref, demo_drive, ffmpeg):
    clip = tmp_path / "clip.mp4"
    subprocess.run([ffmpeg, "-loglevel", "error", "-i", str(demo_drive), "-frames:v", "20", str(clip)], check=True)
    out = tmp_path / "out.mp4"
    stream = subprocess.Popen([*CLI, "stream", "--reference", str(demo_ref), "--source", str(clip),
                               "--method", "still", "--size", "256"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    enc = subprocess.run([ffmpeg, "-loglevel", "error", "-i", "-", str(out)], stdin=stream.stdout, capture_output=True)
    stream.stdout.close()
    err = stream.stderr.read().decode()
    assert stream.wait() == 0 and enc.returncode == 0, err + enc.stderr.decode()
    info = probe(out)
    assert (info["frames"], info["width"], info["fps"]) == (20, 256, 25)
    assert "20 frames in, 20 out" in err


def test_stream_stdin_y4m_to_rgb24(tmp_path, demo_ref, demo_drive, ffmpeg):
    feed = subprocess.Popen([ffmpeg, "-loglevel", "error", "-i", str(demo_drive), "-frames:v", "12",
                             "-f", "yuv4mpegpipe", "-"], stdout=subprocess.PIPE)
    r = subprocess.run([*CLI, "stream", "--reference", str(demo_ref), "--source", "-", "--method", "still",
                        "--size", "128", "--format", "rgb24"], stdin=feed.stdout, capture_output=True)
    feed.stdout.close()
    assert feed.wait() == 0 and r.returncode == 0, r.stderr.decode()
    frames = np.frombuffer(r.stdout, np.uint8).reshape(-1, 128, 128, 3)
    assert len(frames) == 12


def test_stream_raw_rgb24_stdin_needs_size(demo_ref):
    r = invoke("stream", "--reference", demo_ref, "--source", "-", "--method", "still", "--crop", "none",
               input=b"\0" * (64 * 64 * 3 * 4))
    assert r.returncode == 1 and "--input-size" in r.stderr
    # raw frames through a real pipe
    r = subprocess.run([*CLI, "stream", "--reference", str(demo_ref), "--source", "-", "--method", "still",
                        "--crop", "none", "--size", "128", "--input-size", "64x64", "--format", "rgb24"],
                       input=b"\0" * (64 * 64 * 3 * 4), capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    assert len(r.stdout) == 4 * 128 * 128 * 3


def test_a_still_stream_never_imports_torch(demo_ref):
    # `still` runs no torch code: importing torch anyway would cost seconds at every start of the command
    args = ["stream", "--reference", str(demo_ref), "--source", "-", "--method", "still", "--crop", "none",
            "--size", "128", "--input-size", "64x64", "--format", "rgb24"]
    code = ("import atexit, runpy, sys\n"
            "atexit.register(lambda: print('modules:', *sorted(m for m in sys.modules if m == 'torch' or "
            "m.startswith(('torch.', 'personalive_cli.methods.'))), file=sys.stderr))\n"
            f"sys.argv = ['personalive', *{args!r}]\n"
            "runpy.run_module('personalive_cli.cli.app', run_name='__main__', alter_sys=True)\n")
    r = subprocess.run([sys.executable, "-c", code], input=b"\0" * (64 * 64 * 3), capture_output=True)
    assert r.returncode == 0 and len(r.stdout) == 128 * 128 * 3, r.stderr.decode()
    assert r.stderr.decode().splitlines()[-1] == "modules: personalive_cli.methods.still"


@pytest.mark.parametrize("pacing", ["", "--realtime"])
def test_closed_pipe_ends_quietly(demo_ref, demo_drive, pacing):
    r = subprocess.run(f"{sys.executable} -m personalive_cli.cli.app stream --reference {demo_ref} "
                       f"--source {demo_drive} --method still --size 128 {pacing} | head -c 1000 > /dev/null; "
                       "echo ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True, text=True)
    assert r.stdout.strip() == "0"
    assert "Traceback" not in r.stderr and "Error" not in r.stderr


def test_stream_to_file_via_ffmpeg(tmp_path, demo_ref, demo_drive):
    from personalive_cli.io.video import VideoReader

    out = tmp_path / "live.mp4"
    clip = tmp_path / "c.mp4"
    write_video(clip, list(VideoReader(demo_drive).iter_frames(0, 16)))
    r = invoke("stream", "--reference", demo_ref, "--source", clip, "--method", "still", "--size", "128",
               "--to", out)
    assert r.returncode == 0, r.stderr
    assert probe(out)["frames"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mp4", "live.mp4"]


def _one_error_line(r, needle):
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert needle in lines[0] and "Traceback" not in r.stderr


def test_ffmpeg_dying_mid_stream_is_an_error(demo_ref, demo_drive):
    # nothing listens on port 1: ffmpeg fails to open the output, and the stream must say so (not exit 0)
    r = invoke("stream", "--reference", demo_ref, "--source", demo_drive, "--method", "still", "--size", "128",
               "--to", "rtmp://127.0.0.1:1/live/x")
    _one_error_line(r, "ffmpeg")
    assert "Connection refused" in r.stderr


def test_raw_stdin_with_zero_size(demo_ref):
    r = invoke("stream", "--reference", demo_ref, "--source", "-", "--method", "still", "--crop", "none",
               "--input-size", "0x0", input=b"\0" * 100)
    _one_error_line(r, "must be positive")


def _processes_naming(text: str) -> list[str]:
    """Command lines of running processes that mention ``text`` (ffmpeg children outlive their parent
    in their own session, so they are looked for everywhere, not only under the test)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args and "pytest" not in args:
            found.append(args)
    return found


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "timed out waiting for the stream to start"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", ["SIGINT to the group", "SIGTERM"])
def test_signal_mid_stream_keeps_the_file(tmp_path, demo_ref, demo_drive, ffmpeg, sig):
    drive = tmp_path / "drive.mp4"  # 100 frames at 25 fps: 4 s when paced in real time
    subprocess.run([ffmpeg, "-loglevel", "error", "-i", str(demo_drive), "-frames:v", "100", "-vf", "scale=128:128",
                    str(drive)], check=True)
    out = tmp_path / "live.mp4"
    proc = subprocess.Popen([*CLI, "stream", "--reference", str(demo_ref), "--source", str(drive), "--method",
                             "still", "--crop", "none", "--size", "128", "--realtime", "--to", str(out)],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: any(tmp_path.glob(".live.*.part.mp4")), 60, proc)
        time.sleep(0.8)  # some 20 frames in
        if sig == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:  # what Ctrl-C in a terminal does: the whole foreground process group gets SIGINT
            os.killpg(proc.pid, signal.SIGINT)
        stderr = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(r"stream: (\d+) frames in, (\d+) out(, \d+ dropped to keep up in real time)?, interrupted",
                         last)
    assert match, stderr
    received, written = int(match[1]), int(match[2])
    assert 0 < written <= received < 100
    assert probe(out)["frames"] == written  # every frame written is in the file, and it plays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drive.mp4", "live.mp4"]  # no temporary file left
    assert _processes_naming(str(tmp_path)) == []  # no ffmpeg left behind


def test_sigint_ends_a_y4m_stream_on_a_pipe_with_whole_frames(tmp_path, demo_ref, demo_drive, ffmpeg):
    drive = tmp_path / "drive.mp4"
    subprocess.run([ffmpeg, "-loglevel", "error", "-i", str(demo_drive), "-frames:v", "100", "-vf", "scale=128:128",
                    str(drive)], check=True)
    proc = subprocess.Popen([*CLI, "stream", "--reference", str(demo_ref), "--source", str(drive), "--method",
                             "still", "--crop", "none", "--size", "128", "--realtime"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        header = proc.stdout.readline()
        assert header.startswith(b"YUV4MPEG2 W128 H128 F25:1"), proc.stderr.read()
        head = proc.stdout.read(5 * (6 + 128 * 128 * 3 // 2))  # five frames in: the stream is running
        os.killpg(proc.pid, signal.SIGINT)
        rest, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr
    match = re.search(rb"stream: (\d+) frames in, (\d+) out.*, interrupted\n\Z", stderr)
    assert match, stderr
    body = head + rest
    assert len(body) == int(match[2]) * (6 + 128 * 128 * 3 // 2) and 5 <= int(match[2]) < 100  # no half frame
    with av.open(io.BytesIO(header + body), format="yuv4mpegpipe") as c:
        assert sum(1 for _ in c.decode(video=0)) == int(match[2])


def test_sigterm_while_stdin_waits_keeps_the_file(tmp_path, demo_ref, demo_drive, ffmpeg):
    # stdin that delivers a few frames, then stays open with nothing more: the stream sits in a read
    y4m = subprocess.run([ffmpeg, "-loglevel", "error", "-i", str(demo_drive), "-frames:v", "5", "-vf",
                          "scale=128:128", "-f", "yuv4mpegpipe", "-"], capture_output=True, check=True).stdout
    out = tmp_path / "live.mkv"
    proc = subprocess.Popen([*CLI, "stream", "--reference", str(demo_ref), "--source", "-", "--method", "still",
                             "--crop", "none", "--size", "128", "--to", str(out)],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=False, start_new_session=True)
    try:
        proc.stdin.write(y4m)
        proc.stdin.flush()
        _wait_for(lambda: any(tmp_path.glob(".live.*.part.mkv")), 60, proc)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=30)[1].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr
    match = re.fullmatch(r"stream: (\d+) frames in, (\d+) out, interrupted", stderr.strip())
    assert match, stderr
    assert 1 <= int(match[2]) <= 5 and probe(out)["frames"] == int(match[2])
    assert [p.name for p in tmp_path.iterdir()] == ["live.mkv"]
