"""Fixtures for the LivePortrait tests: one thread for torch (faster on a loaded 2-core box), a tiny
random-weight model and its weights folder in the official layout."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def lp_tiny():
    from baselines.liveportrait.models import LivePortraitConfig, LivePortraitModels

    return LivePortraitModels.random(LivePortraitConfig.tiny(), seed=0)


@pytest.fixture(scope="session")
def lp_tiny_weights(tmp_path_factory, lp_tiny):
    root = tmp_path_factory.mktemp("lp_tiny_weights")
    lp_tiny.save_pretrained(root)
    return root
