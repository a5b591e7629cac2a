"""TrainConfig: presets, YAML files, KEY=VALUE overrides and their errors."""

from __future__ import annotations

import pytest

from personalive_cli.errors import UserError
from personalive_cli.training.config import TrainConfig, parse_overrides, resolve_config


def test_official_defaults_are_the_released_recipe():
    c = TrainConfig.preset("official")
    assert (c.max_steps, c.batch_size, c.size, c.pose_size, c.margin) == (50_000, 8, 512, 256, 30)
    assert (c.learning_rate, c.weight_decay, c.max_grad_norm, c.adam_beta1, c.adam_beta2, c.adam_epsilon) == \
        (1e-5, 1e-2, 1.0, 0.9, 0.999, 1e-8)
    assert (c.noise_offset, c.uncond_ratio, c.zero_motion_ratio, c.zero_pose_ratio, c.bank_drop_ratio) == \
        (0.05, 0.1, 0.1, 0.1, 0.3)
    assert c.seed == 12580 and c.optimizer == "adamw" and c.accumulation_steps(8) == 1
    paper = TrainConfig.preset("paper")
    assert paper.max_steps == 30_000 and paper.global_batch_size == 32
    assert [paper.accumulation_steps(n) for n in (1, 2, 4)] == [4, 2, 1]


def test_yaml_then_command_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("batch_size: 4\nlearning_rate: 2e-5\ngradient_checkpointing: true\nvalidation_clip: null\n")
    c = resolve_config("official", f, parse_overrides(["batch_size=2", "seed=7"]))
    assert (c.batch_size, c.learning_rate, c.gradient_checkpointing, c.seed) == (2, 2e-5, True, 7)


@pytest.mark.parametrize("text, message", [
    ("lr: 1e-4\n", "unknown config key 'lr'"),
    ("batch_size: four\n", "batch_size must be an integer"),
    ("- a\n- b\n", "must be a mapping"),
    ("size: 100\n", "size must be a multiple of 64"),
    ("uncond_ratio: 1.5\n", "uncond_ratio must be in [0, 1]"),
])
def test_bad_config_files_are_one_line(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        resolve_config("official", f)
    assert "\n" not in str(e.value)


def test_bad_overrides():
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_overrides(["batch_size"])
    with pytest.raises(UserError, match="unknown preset"):
        resolve_config("huge")
    with pytest.raises(UserError, match="unknown config key 'bach_size'"):
        resolve_config("official", overrides={"bach_size": 2})


def test_global_batch_must_divide():
    c = TrainConfig(batch_size=2, global_batch_size=6)
    assert c.accumulation_steps(3) == 1 and c.accumulation_steps(1) == 3
    with pytest.raises(UserError, match="global_batch_size 6 is not a multiple of batch_size 2 x 2 process"):
        c.accumulation_steps(2)
