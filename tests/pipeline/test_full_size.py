"""Manual-scale check (marked slow: minutes, ~14 GiB RAM and 12 GB of disk): the full-size architecture,
saved with random weights in the official layout, is read back by the exact loader and runs one
streaming step on the CPU at 256x256. Run with `python -m pytest -m slow tests/pipeline/test_full_size.py`."""

import numpy as np
import pytest
import torch

from personalive_cli.pipeline.components import PersonaLiveConfig, PersonaLiveModels
from personalive_cli.pipeline.engine import StreamEngine


@pytest.mark.slow
def test_full_size_random_folder_runs_a_step(tmp_path):
    PersonaLiveModels.random(PersonaLiveConfig(), seed=0).save_pretrained(tmp_path / "w")
    models = PersonaLiveModels.from_pretrained(tmp_path / "w")
    assert models.denoising_unet.config.block_out_channels == (320, 640, 1280, 1280)
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    engine = StreamEngine(models, size=256, seed=0)
    engine.set_reference(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    out = engine.step(rng.integers(0, 255, (4, 256, 256, 3), dtype=np.uint8))
    assert out.frames.shape == (4, 256, 256, 3) and out.warmup
    assert torch.isfinite(out.latents).all()
