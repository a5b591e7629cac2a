"""benchmarks/train_speed.py: Stage-I samples/s and peak memory of the tiny preset on the CPU."""

from __future__ import annotations

import json

from benchmarks.train_speed import main


def test_tiny_preset_on_the_cpu(capsys):
    assert main(["--preset", "tiny", "--device", "cpu", "--warmup", "0", "--steps", "2", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["samples_per_s"] > 0 and row["step_s"] > 0 and row["peak_mem_GiB"] >= 0
    assert (row["size"], row["batch_size"], row["device"], row["mixed_precision"]) == (64, 1, "cpu", "no")
    assert row["trainable_parameters"] > 1e6 and row["mem_kind"] == "process RSS increase"


def test_bad_device_is_one_line(capsys):
    assert main(["--device", "cuda:7", "--steps", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_stage2_and_stage3_rows(capsys):
    """Stages II and III (generator and discriminator updates; Stage III one 16-frame window, without the
    recipe's decoder checkpointing) report their own rows."""
    assert main(["--stage", "stage2", "--device", "cpu", "--warmup", "0", "--steps", "1", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["stage"] == "stage2" and row["step_s"] > 0 and row["sequence_frames"] is None
    for flag in (["--no-decoder-checkpointing"],):
        assert main(["--stage", "stage3", "--device", "cpu", "--warmup", "0", "--steps", "1", "--sequence-frames",
                     "16", "--json", *flag]) == 0
        row = json.loads(capsys.readouterr().out)
        assert (row["stage"], row["sequence_frames"], row["decoder_checkpointing"]) == ("stage3", 16, not flag)
        assert row["samples_per_s"] > 0 and row["trainable_parameters"] > 0
