"""``personalive data prepare talkinghead-1kh``: tube files, crops rescaled to the raw video, missing videos,
and the val split kept apart."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from helpers import invoke, probe

from data_tools.talkinghead import Tube, read_tubes, tube_split
from personalive_cli.errors import UserError
from personalive_cli.faces.crop import resize
from personalive_cli.io.video import VideoReader
from personalive_cli.training.clips import read_train_manifest

TH = ("data", "prepare", "talkinghead-1kh")
# the tubes are drawn on a 1024² frame; the raw video is 512²: every coordinate halves
TUBE = "abc_0000,1024,1024,15,44,192,192,832,832"
CLIP = "abc_0000_S15_E44_L192_T192_R832_B832"
MISSING = ["zz-yt_id_0002,1080,1920,0,50,700,80,1180,560", "zz-yt_id_0003,1080,1920,0,50,700,80,1180,560"]


@pytest.fixture
def raw(tmp_path, demo_drive, ffmpeg):
    """RAW/abc_0000.mp4: two seconds of the demo at 30 fps and its real 512² size."""
    folder = tmp_path / "RAW"
    folder.mkdir()
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(demo_drive), "-t", "2", "-r", "30",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(folder / "abc_0000.mp4")],
                   check=True)
    return folder


def _tubes(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_tubes_are_cropped_resized_resampled_and_missing_videos_listed(tmp_path, raw):
    pytest.importorskip("mediapipe")
    tubes = _tubes(tmp_path, "train_video_tubes.txt", [TUBE, *MISSING])
    dst = tmp_path / "data"
    r = invoke(*TH, tubes, raw, dst, "--size", "128")
    assert r.returncode == 0, r.stderr
    assert "2 raw video(s) named in train_video_tubes.txt are not in" in r.stderr
    assert "zz-yt_id_0002.mp4" in r.stderr and "yt-dlp" in r.stderr and "-segment_time 00:01:00" in r.stderr
    assert "prepared 1 train clip(s)" in r.stderr
    assert (dst / "missing_videos.txt").read_text() == "zz-yt_id\n"  # the YouTube id, once

    root, clips = read_train_manifest(dst)
    assert [(c.id, c.split, c.size, c.fps) for c in clips] == [(CLIP, "train", 128, 25.0)]
    out = dst / "videos" / f"{CLIP}.mp4"
    info = probe(out)
    # frames 15..44 at 30 fps are one second: 25 frames at 25 fps
    assert (info["width"], info["height"], info["fps"], info["frames"]) == (128, 128, 25, 25) == (
        128, 128, 25, clips[0].frames)
    first = next(VideoReader(out).iter_frames(0, 1)).astype(float)
    source = VideoReader(raw / "abc_0000.mp4").read([15])[0]
    rescaled = resize(np.ascontiguousarray(source[96:416, 96:416]), 128)  # the box at the raw video's size
    as_drawn = resize(np.ascontiguousarray(source[192:512, 192:512]), 128)  # the box not rescaled
    err = np.abs(first - rescaled).mean()
    assert err < 4 and np.abs(first - as_drawn).mean() > 4 * err

    # val clips do not go into a folder of training clips (nothing is written), unless asked
    val = _tubes(tmp_path, "val_video_tubes.txt", ["abc_0000,1024,1024,0,9,192,192,832,832", *MISSING])
    before = sorted(p.name for p in dst.rglob("*"))
    r = invoke(*TH, val, raw, dst, "--size", "128")
    assert r.returncode == 1 and "holds training clips and these are val clips" in r.stderr
    assert "--allow-val-in-train" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in dst.rglob("*")) == before
    r = invoke(*TH, val, raw, dst, "--size", "128", "--allow-val-in-train")
    assert r.returncode == 0 and "prepared 1 val clip(s)" in r.stderr, r.stderr
    splits = {c.id: (c.split, c.frames) for c in read_train_manifest(dst)[1]}
    assert splits == {CLIP: ("train", 25), "abc_0000_S0_E9_L192_T192_R832_B832": ("val", 9)}  # 1/3 s


def test_all_missing_and_bad_tube_files(tmp_path):
    raw = tmp_path / "RAW"
    raw.mkdir()
    tubes = _tubes(tmp_path, "small_video_tubes.txt", MISSING)
    r = invoke(*TH, tubes, raw, tmp_path / "data")
    assert r.returncode == 1 and "none of the 2 raw videos named in small_video_tubes.txt" in r.stderr
    assert "train_video_ids.txt" in r.stderr and not (tmp_path / "data").exists()

    bad = _tubes(tmp_path, "train_video_tubes.txt", [TUBE, "abc_0001,1080,1920,0,50"])
    r = invoke(*TH, bad, raw, tmp_path / "out")
    assert r.returncode == 1 and "train_video_tubes.txt line 2: expected 9 comma-separated values" in r.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="line 1: H,W,S,E,L,T,R,B must be whole numbers"):
        read_tubes(_tubes(tmp_path, "t.txt", ["abc_0000,1080,1920,0,x,1,2,3,4"]))
    with pytest.raises(UserError, match="line 2: needs H, W > 0, 0 <= S <= E"):
        read_tubes(_tubes(tmp_path, "t.txt", [TUBE, "abc_0000,1080,1920,50,10,1,2,3,4"]))
    r = invoke(*TH, tmp_path / "nope.txt", raw, tmp_path / "out")
    assert r.returncode == 1 and "tube file not found" in r.stderr
    unnamed = _tubes(tmp_path, "t.txt", MISSING)
    r = invoke(*TH, unnamed, tmp_path / "no_raw", tmp_path / "out")
    assert r.returncode == 1 and "raw video folder not found" in r.stderr
    r = invoke(*TH, unnamed, raw, tmp_path / "out")
    assert r.returncode == 1 and "cannot tell the split of t.txt" in r.stderr
    assert not (tmp_path / "out").exists()


def test_tube_split_box_and_ids():
    assert tube_split("val_video_tubes.txt", None) == "val"
    assert tube_split("small_video_tubes.txt", None) == tube_split("x.txt", "train") == "train"
    with pytest.raises(UserError, match="official val split"):
        tube_split("val_video_tubes.txt", "train")
    assert tube_split("val_video_tubes.txt", "train", allow_val_in_train=True) == "train"
    tube = Tube("a_b-c_0012", 1080, 1920, 0, 10, 700, 80, 1180, 560)
    assert tube.video_id == "a_b-c" and tube.clip_id == "a_b-c_0012_S0_E10_L700_T80_R1180_B560"
    assert tube.box(720, 1280) == (466, 53, 786, 373)  # the official truncation of the rescaled box
    with pytest.raises(UserError, match="outside"):
        Tube("a", 100, 100, 0, 1, 90, 90, 99, 99).box(10, 10)
