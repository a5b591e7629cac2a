"""Bench manifests: CSV/JSON, folder of videos, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import write_video

from data_tools.manifest import Entry, load_dataset, read_manifest, write_manifest
from personalive_cli.errors import UserError


def test_round_trip_csv_and_json(tmp_path):
    entries = [Entry(id="a", protocol="self", driving="videos/a.mp4", frames=40, fps=25.0),
               Entry(id="b", protocol="cross", driving="videos/a.mp4", reference="refs/b.png")]
    for name in ("m.csv", "m.json"):
        write_manifest(tmp_path / name, entries)
        back = read_manifest(tmp_path / name)
        assert [(e.id, e.protocol, e.driving, e.reference, e.frames) for e in back] == \
            [("a", "self", "videos/a.mp4", "", 40), ("b", "cross", "videos/a.mp4", "refs/b.png", None)]
    root, got = load_dataset(tmp_path / "m.json")
    assert root == tmp_path and got[1].reference_path(root) == tmp_path / "refs" / "b.png"


def test_defaults_and_errors(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps([{"driving": "x/clip.mp4"}, {"driving": "y.mp4", "reference": "r.png"}]))
    a, b = read_manifest(tmp_path / "m.json")
    assert (a.id, a.protocol, b.protocol) == ("clip", "self", "cross")
    (tmp_path / "bad.json").write_text(json.dumps([{"driving": "a.mp4", "protocol": "cross"}]))
    with pytest.raises(UserError, match="needs a 'reference'"):
        read_manifest(tmp_path / "bad.json")
    (tmp_path / "dup.csv").write_text("id,driving\na,1.mp4\na,2.mp4\n")
    with pytest.raises(UserError, match="duplicate ids a"):
        read_manifest(tmp_path / "dup.csv")
    with pytest.raises(UserError, match="dataset not found"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no videos"):
        load_dataset(tmp_path / "empty")


def test_folder_of_videos_is_self_reenactment(tmp_path):
    frames = [np.zeros((64, 64, 3), np.uint8)] * 2
    (tmp_path / "sub").mkdir()
    write_video(tmp_path / "a.mp4", frames)
    write_video(tmp_path / "sub" / "b.mp4", frames)
    root, entries = load_dataset(tmp_path)
    assert [(e.id, e.protocol) for e in entries] == [("a", "self"), ("sub__b", "self")]


def test_bad_entries_are_one_line_errors(tmp_path):
    (tmp_path / "frames.csv").write_text("id,driving,frames\na,a.mp4,ten\n")
    with pytest.raises(UserError, match="'frames' must be a whole number"):
        read_manifest(tmp_path / "frames.csv")
    (tmp_path / "fps.json").write_text(json.dumps([{"driving": "a.mp4", "fps": "fast"}]))
    with pytest.raises(UserError, match="'fps' must be a positive number"):
        read_manifest(tmp_path / "fps.json")
    for bad in (["a.mp4"], [1, 2], {"items": [None]}):
        (tmp_path / "list.json").write_text(json.dumps(bad))
        with pytest.raises(UserError, match="expected an object"):
            read_manifest(tmp_path / "list.json")
