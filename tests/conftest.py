"""Shared fixtures: the demo files in ../shared (skip cleanly when absent) and small generated videos."""

from __future__ import annotations

import gc
import signal
from pathlib import Path

import pytest
import torch
from helpers import DEMO_DRIVE, DEMO_REF, SHARED


def pytest_configure(config):
    """Ctrl-C behaves as in a terminal whatever started the run: a job started in the background by a
    non-interactive shell (and so each pytest-xdist worker it starts) inherits SIGINT ignored, and an ignored
    signal stays ignored in every child process; the interrupt tests need the default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _freeze_what_lives() -> None:
    gc.collect()
    gc.freeze()


def pytest_collection_finish(session):
    """Everything imported by now (torch, diffusers, every test module: millions of objects) lives until
    the end; frozen out of the garbage collector's sight, each ``gc.collect()`` (the bench calls it
    around every method) and each automatic full collection walks only what the tests create."""
    _freeze_what_lives()


_module_seen: list = [None]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """The same at the start of each test module (before its fixtures; the previous module's are torn
    down): what earlier modules imported lazily (a method's stack, metric networks) lives on too."""
    if item.module is not _module_seen[0]:
        _module_seen[0] = item.module
        _freeze_what_lives()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests run torch on one thread: tiny models gain nothing from two, and on a shared 2-core
    machine two threads made a tiny forward pass up to 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    return SHARED


@pytest.fixture(scope="session")
def demo_ref(shared_dir) -> Path:
    if not DEMO_REF.is_file():
        pytest.skip("demo portrait absent")
    return DEMO_REF


@pytest.fixture(scope="session")
def demo_drive(shared_dir) -> Path:
    if not DEMO_DRIVE.is_file():
        pytest.skip("demo driving video absent")
    return DEMO_DRIVE


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    from personalive_cli.io.ffmpeg import find_ffmpeg

    return find_ffmpeg()


@pytest.fixture(scope="session")
def tiny_models():
    """The tiny PersonaLive (same architecture, few channels), seeded random weights."""
    from personalive_cli.pipeline.components import PersonaLiveConfig, PersonaLiveModels

    return PersonaLiveModels.random(PersonaLiveConfig.tiny(), seed=0)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, tiny_models) -> Path:
    """A weights folder in the official layout holding the tiny model (what users' folders look like)."""
    root = tmp_path_factory.mktemp("tiny_weights")
    tiny_models.save_pretrained(root)
    return root
