import pytest
import torch

from personalive_cli.devices import resolve
from personalive_cli.errors import UserError


def test_a_method_without_torch_code_gets_the_cpu_without_torch_choices_checked():
    assert resolve("auto", "auto", uses_torch=False) == ("cpu", None)
    assert resolve("cpu", "fp32", uses_torch=False) == ("cpu", None)
    assert resolve("cpu", "auto") == (torch.device("cpu"), torch.float32)
    assert resolve("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)  # half precision on the CPU too
    assert resolve("cpu", "fp16") == (torch.device("cpu"), torch.float16)


@pytest.mark.parametrize("uses_torch", [True, False])
def test_wrong_choices_are_refused_for_every_method(uses_torch):
    with pytest.raises(UserError, match="unknown device"):
        resolve("tpu", "auto", uses_torch)
    with pytest.raises(UserError, match="unknown dtype"):
        resolve("cpu", "fp8", uses_torch)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve("cuda", "auto", uses_torch)
