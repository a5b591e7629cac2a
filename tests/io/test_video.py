from fractions import Fraction

import numpy as np
import pytest
from helpers import DEMO_FRAMES, make_driving_with_audio, probe, write_video

from personalive_cli.errors import UserError
from personalive_cli.io.video import VideoReader, VideoWriter


def test_demo_true_frame_count(demo_drive):
    reader = VideoReader(demo_drive)
    assert len(reader) == DEMO_FRAMES
    assert reader.info.fps == 25
    assert (reader.info.width, reader.info.height) == (512, 512)
    assert sum(1 for _ in reader.iter_frames(1500)) == DEMO_FRAMES - 1500


def test_random_access_matches_sequential(demo_drive):
    reader = VideoReader(demo_drive)
    sequential = list(reader.iter_frames(0, 60))
    for i in (59, 0, 31, 7, 48):
        assert np.array_equal(reader.read([i])[0], sequential[i]), i
    tail = list(reader.iter_frames(DEMO_FRAMES - 3))
    assert np.array_equal(reader.read([DEMO_FRAMES - 1])[0], tail[-1])


@pytest.mark.parametrize("src_fps,dst_fps", [("30000/1001", Fraction(25)), ("24", Fraction(30)), ("25", Fraction(25))])
def test_resampled_indices_do_not_drift(tmp_path, demo_drive, ffmpeg, src_fps, dst_fps):
    video = make_driving_with_audio(ffmpeg, demo_drive, tmp_path / "d.mp4", src_fps, 10, size=64)
    reader = VideoReader(video)
    idx = reader.resampled_indices(dst_fps)
    src = Fraction(src_fps)
    # the output covers the same duration, and frame k shows the source frame at or before k/dst_fps
    assert abs(len(idx) / dst_fps - len(reader) / src) <= 1 / dst_fps
    for k in (0, len(idx) // 2, len(idx) - 1):
        assert idx[k] == min(int(Fraction(k) / dst_fps * src + Fraction(1, 10**6)), len(reader) - 1)


def test_writer_renames_only_when_complete(tmp_path):
    target = tmp_path / "o.mp4"
    frames = [np.full((64, 64, 3), i * 10, np.uint8) for i in range(5)]
    with pytest.raises(RuntimeError):
        with VideoWriter(target, 25) as w:
            w.write(frames[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with VideoWriter(target, 25) as w:
        for f in frames:
            w.write(f)
    assert [p.name for p in tmp_path.iterdir()] == ["o.mp4"]
    assert probe(target)["frames"] == 5


def test_writer_muxes_audio_cut_to_video(tmp_path, demo_drive, ffmpeg):
    drive = make_driving_with_audio(ffmpeg, demo_drive, tmp_path / "d.mp4", "30", 3, size=64)
    reader = VideoReader(drive)
    with VideoWriter(tmp_path / "o.mp4", reader.info.fps, audio_from=drive) as w:
        for f in reader.iter_frames(0, 45):
            w.write(f)
    info = probe(tmp_path / "o.mp4")
    assert info["frames"] == 45 and info["fps"] == 30
    assert info["audio_seconds"] == pytest.approx(1.5, abs=0.03)


def test_missing_and_bad_videos(tmp_path):
    with pytest.raises(UserError, match="not found"):
        VideoReader(tmp_path / "nope.mp4")
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n")
    with pytest.raises(UserError, match="cannot read video"):
        VideoReader(text)


def test_synthetic_video_roundtrip(tmp_path):
    frames = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(7)]
    reader = VideoReader(write_video(tmp_path / "s.mp4", frames))
    assert len(reader) == 7 and (reader.info.width, reader.info.height) == (64, 48)


def test_variable_frame_rate_is_placed_by_timestamps(tmp_path):
    from helpers import write_vfr_video

    reader = VideoReader(write_vfr_video(tmp_path / "vfr.mp4", n=66, seconds=4.0))
    assert len(reader) == 66 and not reader.constant_rate
    fps, indices = reader.output_plan()
    # the announced rate is an average near 66/4 = 16.5 (e.g. 11000/667): output at it rounded, a regular rate
    assert abs(reader.info.fps - Fraction(33, 2)) < 1 and fps == round(reader.info.fps)
    assert abs(len(indices) / fps - 4.0) <= 1 / fps  # the duration is kept
    assert indices == sorted(indices) and indices[0] == 0 and indices[-1] == 65
    times = [reader.frame_time(i) - reader.first_frame_time for i in indices]
    # each output frame k shows the source frame presented at or before k / fps
    assert all(t <= k / fps + 1e-9 for k, t in enumerate(times))


def test_constant_rate_keeps_every_frame(tmp_path):
    frames = [np.full((32, 32, 3), i, np.uint8) for i in range(30)]
    reader = VideoReader(write_video(tmp_path / "c.mp4", frames, fps=30))
    assert reader.constant_rate
    assert reader.output_plan() == (30, list(range(30)))
    assert reader.output_plan(limit=7) == (30, list(range(7)))


def test_resampled_segment_is_timed_from_its_first_frame(tmp_path):
    """Frames 15..44 of a 30 fps video (1 s) at 25 fps: 25 frames, frame k showing source 15 + ⌊k·30/25⌋."""
    video = write_video(tmp_path / "v.mp4", [np.full((16, 16, 3), i, np.uint8) for i in range(60)], fps=30)
    reader = VideoReader(video)
    idx = reader.resampled_indices(Fraction(25), start=15, stop=45)
    assert idx == [15 + k * 30 // 25 for k in range(25)]
    assert reader.resampled_indices(Fraction(25), start=50, stop=200) == [50 + k * 30 // 25 for k in range(9)]
    assert reader.resampled_indices(Fraction(25), start=15, stop=45, limit=4) == idx[:4]
    assert reader.resampled_indices(Fraction(25), start=60) == []
