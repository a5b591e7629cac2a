"""UNet building blocks: frame folding, per-frame time embeddings, bank names and the early bank read."""

import pytest
import torch

from personalive_cli.models.denoising_unet import DenoisingUNet, DenoisingUNetConfig
from personalive_cli.models.unet_blocks import (
    bank_tokens,
    fold_frames,
    spatial_block_names,
    time_embedding,
    unfold_frames,
)


def test_fold_frames_is_frame_fastest_and_inverts():
    x = torch.randn(2, 3, 4, 5, 6)
    folded = fold_frames(x)
    assert folded.shape == (8, 3, 5, 6)
    assert torch.equal(folded[1 * 4 + 2], x[1, :, 2])
    assert torch.equal(unfold_frames(folded, 4), x)


def test_time_embedding_forms():
    torch.manual_seed(0)
    model = DenoisingUNet(DenoisingUNetConfig.tiny())
    per_frame = time_embedding(model, torch.tensor([1, 500]), 4, 2, torch.device("cpu"), torch.float32)
    flat = time_embedding(model, torch.tensor([1, 500, 1, 500]), 4, 2, torch.device("cpu"), torch.float32)
    scalar = time_embedding(model, 7, 4, 2, torch.device("cpu"), torch.float32)
    assert torch.equal(per_frame, flat) and scalar.shape == (4, 4 * 32)
    assert torch.equal(scalar[0], scalar[3])
    with pytest.raises(ValueError):
        time_embedding(model, torch.tensor([1, 2, 3]), 4, 2, torch.device("cpu"), torch.float32)


def test_block_names_in_execution_order():
    torch.manual_seed(0)
    model = DenoisingUNet(DenoisingUNetConfig.tiny())
    names = spatial_block_names(model)
    assert names[0] == "down_blocks.0.attentions.0.transformer_blocks.0"
    assert names[6] == "mid_block.attentions.0.transformer_blocks.0"
    assert names[-1] == "up_blocks.3.attentions.2.transformer_blocks.0"
    assert all(isinstance(model.get_submodule(n).attn1, torch.nn.Module) for n in names)


def test_bank_tokens_equal_the_stock_forwards_layernorm1_output():
    torch.manual_seed(0)
    transformer = DenoisingUNet(DenoisingUNetConfig.tiny()).down_blocks[1].attentions[0]
    x, ctx = torch.randn(2, 64, 4, 3), torch.randn(2, 1, 768)
    seen = []
    transformer.transformer_blocks[0].norm1.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        transformer(x, encoder_hidden_states=ctx, return_dict=False)
        assert torch.equal(bank_tokens(transformer, x), seen[0])
