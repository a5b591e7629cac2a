from importlib.metadata import EntryPoint

import numpy as np
import pytest

from personalive_cli import registry
from personalive_cli.errors import UserError
from personalive_cli.registry import Method, Session


class _Doubler(Session):
    """Test double: emits each driving frame twice as bright; 4 frames per step."""

    def __init__(self):
        super().__init__(frames_per_step=4)
        self.steps = 0

    def step(self, frames):
        self.steps += 1
        for f in frames:
            yield f * 2


def test_session_buffers_whole_steps_and_flush_drops_padding():
    s = _Doubler()
    frames = np.arange(10, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3)
    out = list(s.push(frames[:3]))
    assert out == [] and s.steps == 0
    out += list(s.push(frames[3:]))
    assert len(out) == 8 and s.steps == 2
    out += list(s.flush())
    assert len(out) == 10 and s.steps == 3
    assert [int(o[0, 0, 0]) for o in out] == [2 * i for i in range(10)]


def test_unknown_method_names_known():
    with pytest.raises(UserError, match="known methods: .*still"):
        registry.get("nope")


def test_entry_point_plugins_register(monkeypatch):
    class Plugin(Method):
        def start(self, reference):
            raise AssertionError("not started in this test")

    import sys
    import types

    mod = types.ModuleType("fake_plugin_mod")
    mod.Plugin = Plugin
    monkeypatch.setitem(sys.modules, "fake_plugin_mod", mod)
    ep = EntryPoint(name="plugin-x", value="fake_plugin_mod:Plugin", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_loaded_entry_points", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert registry.get("plugin-x") is Plugin and Plugin.name == "plugin-x"


def test_duplicate_registration_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry.available()))
    with pytest.raises(ValueError, match="already registered"):
        @registry.register("still")
        class Other(Method):
            def start(self, reference):
                return None


def test_push_is_eager_and_flush_returns_the_rest():
    s = _Doubler()
    frames = np.zeros((6, 2, 2, 3), np.uint8)
    s.push(frames)  # the result is ignored: the step still ran
    assert s.steps == 1
    assert len(s.flush()) == 2 and s.steps == 2


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 2, 3), np.float32), "uint8"),
    (np.zeros((2, 2, 2), np.uint8)[..., :2].reshape(1, 2, 2, 2), r"\(n, h, w, 3\)"),
    (np.zeros((1, 1, 2, 2, 3), np.uint8), r"\(n, h, w, 3\)"),
    (np.zeros((3, 3, 3), np.uint8), "must be 2×2"),
    ([[1, 2], [3, 4]], "uint8"),
])
def test_session_refuses_frames_of_the_wrong_kind(bad, match):
    s = _Doubler()
    s.size = 2
    with pytest.raises(UserError, match=match):
        s.push(bad)


def test_session_converts_grey_and_rgba_at_the_edge():
    s = _Doubler()
    s.size = 2
    grey = np.full((2, 2), 7, np.uint8)
    rgba = np.full((3, 2, 2, 4), 9, np.uint8)
    s.push(grey)
    out = s.push(rgba)
    assert len(out) == 4 and all(o.shape == (2, 2, 3) for o in out)
    assert int(out[0][0, 0, 0]) == 14 and int(out[1][0, 0, 2]) == 18


def test_every_builtin_comes_from_the_entry_points():
    from importlib.metadata import distribution

    declared = {ep.name for ep in distribution("personalive").entry_points if ep.group == registry.ENTRY_POINT_GROUP}
    assert declared == {"still", "personalive", "liveportrait", "x-portrait", "follow-your-emoji", "megactor-sigma"}
    assert declared <= set(registry.available())


def test_a_broken_plugin_is_listed_and_the_rest_keeps_working(monkeypatch):
    from typer.testing import CliRunner

    from personalive_cli.cli.app import app

    registry.available()
    broken = EntryPoint(name="broken-x", value="no_such_module_for_personalive:Method", group=registry.ENTRY_POINT_GROUP)
    real = list(registry.entry_points(group=registry.ENTRY_POINT_GROUP))
    monkeypatch.setattr(registry, "entry_points", lambda group: [*real, broken])
    monkeypatch.setattr(registry, "_loaded_entry_points", False)
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_FAILED", {})
    assert "still" in registry.available()
    assert "ModuleNotFoundError" in registry.failed()["broken-x"]
    with pytest.raises(UserError, match="method 'broken-x' failed to load: ModuleNotFoundError"):
        registry.get("broken-x")
    r = CliRunner().invoke(app, ["methods", "--json"])
    assert r.exit_code == 0, r.output
    import json

    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["broken-x"]["status"].startswith("failed to load: ModuleNotFoundError")
    assert rows["still"]["ready"]


def test_options_are_declared_typed_and_accepted_by_constructors():
    import dataclasses
    import inspect

    for name, cls in registry.available().items():
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for f in dataclasses.fields(cls.Options):
            assert f.name in params or takes_any, (name, f.name)
            assert f.metadata.get("help"), (name, f.name)
    pl = registry.get("personalive")
    assert pl.parse_options(["keyframes=off", "keyframe_threshold=12", "max-keyframes=2"]) == {
        "keyframes": False, "keyframe_threshold": 12.0, "max_keyframes": 2}
    with pytest.raises(UserError, match="wants true or false"):
        pl.parse_options(["keyframes=maybe"])
    with pytest.raises(UserError, match="wants an integer"):
        pl.parse_options(["max_keyframes=2.5"])
    with pytest.raises(UserError, match="has no option 'speed'.*methods info personalive"):
        pl.parse_options(["speed=3"])
    assert registry.get("megactor-sigma").parse_options(["use_audio=false", "timeout=none"]) == {
        "use_audio": False, "timeout": None}
