"""Fixtures for the bench tests: tiny synthetic datasets, test-double methods, a random-weight LPIPS."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from helpers import write_video

from personalive_cli import registry
from personalive_cli.registry import Method, MethodStatus, Session


def _moving_frames(n: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    return [np.roll(base, (i, 2 * i), axis=(0, 1)) for i in range(n)]


@pytest.fixture
def tiny_dataset(tmp_path):
    """A folder of three 8-frame 128² videos (already in the bench's form)."""
    d = tmp_path / "videos"
    d.mkdir()
    for k in range(3):
        write_video(d / f"clip{k}.mp4", _moving_frames(8, 128, k), fps=25)
    return d


class _DelaySession(Session):
    """TEST DOUBLE: 4 frames per step, a 3×3 conv per frame, outputs one step late (like a window)."""

    def __init__(self, method, reference):
        super().__init__(frames_per_step=4)
        self.method = method
        self.reference = reference
        self.held: deque = deque()

    def step(self, frames):
        import torch

        self.method.calls += 1
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        y = self.method.conv(x)  # real FLOPs: 2 * 3 * 3 * 3 * 3 * h * w per frame
        out = list(frames if self.method.copy else [self.reference] * len(frames))
        assert y.shape[0] == len(frames)
        self.held.append(out)
        if len(self.held) > 1:
            yield from self.held.popleft()

    def flush(self):
        n = len(self._pending)
        if n:
            frames = self._pending + [self._pending[-1]] * (self.frames_per_step - n)
            self._pending = []
            yield from self.step(np.stack(frames))
            last = self.held.pop()
            yield from self.finish()
            yield from last[:n]
        else:
            yield from self.finish()

    def finish(self):
        while self.held:
            yield from self.held.popleft()


class ConvDouble(Method):
    """TEST DOUBLE registered only inside tests: ``copy`` returns the driving frames (perfect
    self-reenactment), else the reference (like ``still``)."""

    frames_per_step = 4
    description = "test double"
    copy = True
    fail_on: str | None = None

    def __init__(self, **kw):
        import torch

        super().__init__(**kw)
        self.calls = 0
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def start(self, reference):
        return _DelaySession(self, reference)


@pytest.fixture
def double_method(monkeypatch):
    """Register ``test-double`` (copies the driving video) for this test only; yields the class."""
    registry.available()
    cls = type("CopyDouble", (ConvDouble,), {})
    monkeypatch.setitem(registry._REGISTRY, "test-double", cls)
    cls.name = "test-double"
    return cls


@pytest.fixture
def absent_method(monkeypatch):
    """A TEST DOUBLE that needs weights which are absent (and cannot build random ones)."""
    registry.available()

    class NeedsWeights(ConvDouble):
        can_use_random_weights = True

        def __init__(self, weights=None, device="cpu", dtype=None, size=512, seed=None):  # no random_weights
            super().__init__(weights=weights, device=device, dtype=dtype, size=size, seed=seed)

        @classmethod
        def status(cls, weights=None):
            return MethodStatus(ready=False, detail="test-weights.pth not found in /nowhere")

    monkeypatch.setitem(registry._REGISTRY, "needs-weights", NeedsWeights)
    NeedsWeights.name = "needs-weights"
    return NeedsWeights


@pytest.fixture(scope="session")
def random_lpips():
    """LPIPSMetric on a random-weight AlexNet (no download): real code path, meaningless scale."""
    pytest.importorskip("lpips")
    from benchmarks.metrics.lpips_metrics import LPIPSMetric, build_lpips_alex

    return LPIPSMetric(build_lpips_alex(random_trunk=True), size=64)  # small: fast on a shared CPU


@pytest.fixture
def empty_metric_caches(tmp_path, monkeypatch):
    """Every metric network absent, whatever this machine has cached."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "insightface"))
    monkeypatch.setenv("PERSONALIVE_METRICS_DIR", str(tmp_path / "metrics"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(scope="session", autouse=True)
def _device_peak_measured_once():
    """A speed row's device peak (a second of large matmuls) is measured once per device and dtype in
    the test session, as a bench run measures it once per device and dtype (``test_device_peak_is_positive``
    calls the function itself)."""
    import functools

    from benchmarks import speed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(speed, "device_peak_tflops", functools.lru_cache(maxsize=None)(speed.device_peak_tflops))
        yield


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny CPU work on a small shared machine: one intra-op thread avoids thread thrash."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def moving_frames():
    """``moving_frames(n, size, seed)``: a random blocky image sliding diagonally, as uint8 frames."""
    return _moving_frames


@pytest.fixture
def context_method(monkeypatch):
    """A TEST DOUBLE with ``takes_driving_context``: records the fps/audio options it is built with."""
    registry.available()

    class Context(ConvDouble):
        takes_driving_context = True
        seen: list = []

        def __init__(self, fps=None, audio=None, audio_start=0.0, **kw):
            super().__init__(**kw)
            type(self).seen.append((fps, audio))

    monkeypatch.setitem(registry._REGISTRY, "context-double", Context)
    Context.name = "context-double"
    return Context
