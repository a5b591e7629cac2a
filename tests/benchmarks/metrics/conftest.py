"""Shared fixtures for the metric tests: the demo portrait and an isolated (empty) weight cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[3].parent / "shared"


@pytest.fixture(scope="session")
def demo_portrait() -> np.ndarray:
    p = SHARED / "demo" / "ref_image.png"
    if not p.is_file():
        pytest.skip(f"demo portrait not found at {p}")
    from PIL import Image

    return np.asarray(Image.open(p).convert("RGB"))


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Point every standard weight cache at empty folders, so 'missing file' paths are deterministic."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "insightface"))
    monkeypatch.setenv("PERSONALIVE_METRICS_DIR", str(tmp_path / "metrics"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    d = tmp_path / "weights"
    d.mkdir()
    return d


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny CPU forwards: one intra-op thread avoids thread thrash on a small, shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
