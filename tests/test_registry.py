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
