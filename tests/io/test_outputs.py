"""The output validator and atomic writing: containers by extension, inputs never overwritten,
folders created by a failed run removed again."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import probe

from personalive_cli.errors import UserError
from personalive_cli.io.outputs import NewFolder, check_not_input, check_output_folder, video_container
from personalive_cli.io.video import VideoWriter


@pytest.mark.parametrize("suffix,codec", [(".mp4", "h264"), (".mov", "h264"), (".mkv", "h264"), (".webm", "vp9")])
def test_container_follows_the_extension_with_audio(tmp_path, ffmpeg, suffix, codec):
    import subprocess

    import av

    tone = tmp_path / "tone.mp4"
    subprocess.run([ffmpeg, "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
                    "-t", "2", str(tone)], check=True)
    out = tmp_path / f"clip{suffix}"
    with VideoWriter(out, 25, audio_from=tone) as w:
        for i in range(25):
            w.write(np.full((64, 64, 3), i * 8, np.uint8))
    info = probe(out)
    assert info["frames"] == 25 and info["width"] == 64
    assert abs(info["audio_seconds"] - 1.0) < 0.05  # cut to the video's length
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == codec
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["tone.mp4", out.name])


def test_unknown_extension_is_refused_with_the_list():
    with pytest.raises(UserError, match=r"use one of \.mp4, \.mov, \.mkv, \.webm"):
        video_container("out.avi")


def test_output_that_is_an_input_under_another_name(tmp_path):
    src = tmp_path / "in.mp4"
    src.write_bytes(b"x")
    (tmp_path / "link.mp4").symlink_to(src)
    (tmp_path / "sub").mkdir()
    for name in (src, tmp_path / "link.mp4", tmp_path / "sub" / ".." / "in.mp4"):
        with pytest.raises(UserError, match="also an input"):
            check_not_input(name, [src])
    check_not_input(tmp_path / "other.mp4", [src, None, "-", "/dev/video0"])


def test_output_folder_checks(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_output_folder(tmp_path / "f")
    with pytest.raises(UserError, match="is a file"):
        check_output_folder(tmp_path / "f" / "deeper")
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_new_folder_removed_after_a_failure_without_output(tmp_path):
    with pytest.raises(RuntimeError), NewFolder(tmp_path / "a" / "b", scaffolding=("run.json",)) as f:
        (f.path / "run.json").write_text("{}")
        (f.path / ".tmp.part.mp4").write_bytes(b"half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []  # the parent it created went too


def test_new_folder_kept_once_something_is_finished_or_when_it_existed(tmp_path):
    with pytest.raises(KeyboardInterrupt), NewFolder(tmp_path / "a") as f:
        (f.path / "clip.mp4").write_bytes(b"done")
        raise KeyboardInterrupt
    assert (tmp_path / "a" / "clip.mp4").is_file()
    (tmp_path / "mine").mkdir()
    with pytest.raises(RuntimeError), NewFolder(tmp_path / "mine"):
        raise RuntimeError
    assert (tmp_path / "mine").is_dir()  # the user's folder is never removed


def test_staged_into_moves_parts_in_only_when_complete(tmp_path):
    from personalive_cli.io.outputs import staged_into

    root = tmp_path / "w"
    with staged_into(root) as staging:
        (staging / "a").mkdir()
        (staging / "a" / "x.pth").write_bytes(b"1")
    assert (root / "a" / "x.pth").read_bytes() == b"1"
    with pytest.raises(KeyboardInterrupt), staged_into(root) as staging:
        (staging / "a").mkdir()
        (staging / "a" / "x.pth").write_bytes(b"half")
        raise KeyboardInterrupt
    assert (root / "a" / "x.pth").read_bytes() == b"1"  # untouched by the interrupted save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no staging folder left


def test_new_folder_made_by_another_process_meanwhile_is_not_an_error(tmp_path, monkeypatch):
    """Parallel bench shards create the same output folder: whoever comes second must carry on, and
    must not remove on failure a folder it did not create."""
    from pathlib import Path

    target = tmp_path / "out"
    real_mkdir = Path.mkdir

    def racing_mkdir(self, *args, **kwargs):
        if self == target:
            real_mkdir(self)  # the other shard wins the race
            raise FileExistsError(17, "File exists", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    with pytest.raises(RuntimeError), NewFolder(target) as f:
        assert not f.created
        raise RuntimeError
    assert target.is_dir()
