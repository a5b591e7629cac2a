"""The generic strict loader: every key once, the right shape, nothing extra, nothing missing."""

from pathlib import Path

import pytest
import torch

from personalive_cli.errors import UserError
from personalive_cli.weights import compare_keys, load_exact


def test_a_key_in_two_files_is_an_error_not_last_wins(tmp_path):
    module = torch.nn.Linear(2, 2)
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save({"weight": torch.ones(2, 2), "bias": torch.zeros(2)}, a)
    torch.save({"weight": torch.full((2, 2), 2.0)}, b)
    with pytest.raises(UserError, match=r"a\.pth and .*b\.pth both hold key weight"):
        load_exact(module, [a, b])
    torch.save({"bias": torch.zeros(2)}, b)
    torch.save({"weight": torch.ones(2, 2)}, a)
    load_exact(module, [a, b])  # split across files, each key once: fine
    assert torch.equal(module.weight, torch.ones(2, 2))


def test_problems_name_file_and_key():
    expected = {"w": torch.Size([2]), "b": torch.Size([1])}
    _, problems = compare_keys(expected, [(Path("x.pth"), {"w": torch.zeros(3), "extra": torch.zeros(1)})])
    assert any("x.pth: key w has shape (3,)" in p for p in problems)
    assert any("unexpected keys extra" in p for p in problems)
    assert any("missing keys b" in p for p in problems)
