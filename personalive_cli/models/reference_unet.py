"""The reference UNet: the appearance "write" pass (spec §1.4, §2.2).

The SD-1.5 2-D UNet (same blocks and keys as diffusers' `UNet2DConditionModel`) without
`conv_norm_out` / `conv_out`: 682 state-dict keys, exactly the official `reference_unet.pth`. It runs once
per reference image (and once per historical keyframe) at timestep 0 with the CLIP image embedding as the
cross-attention context, and returns, for every spatial transformer block, the LayerNorm1 output (the
tokens that feed that block's self-attention): the "bank". The denoising UNet pairs banks with its own
blocks by module path (`attention_block_names()`), which is identical in both networks.

Skipping the tail is exact: a bank only depends on what runs before it, so the forward stops as soon as the
last bank (up_blocks.3.attentions.2 in SD-1.5) is written, and does not compute that block's attention,
the rest of the up path or the output head, whose result nobody reads.
"""

from __future__ import annotations

import torch

from personalive_cli.models.denoising_unet import (
    DenoisingUNetConfig,
    _build_body,
    _Cond,
    _time_embedding,
    _UNetBase,
)

__all__ = ["ReferenceUNet"]


class ReferenceUNet(_UNetBase):
    """banks = ReferenceUNet(latent (b, 4, h, w), clip_embeds (b, n, 768)) -> {block name: (b, L, C)}.

    Built from the same `DenoisingUNetConfig` as the denoising UNet (motion/temporal fields unused).
    """

    def __init__(self, config: DenoisingUNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DenoisingUNetConfig()
        _build_body(self, cfg, video=False)
        self._finish_build()

    def forward(
        self, latent: torch.Tensor, clip_embeds: torch.Tensor, timestep: torch.Tensor | float | int = 0
    ) -> dict[str, torch.Tensor]:
        """latent (b, 4, h, w) (VAE mean x 0.18215), clip_embeds (b, n, cross_attention_dim).

        Returns {block name: LayerNorm1 tokens (b, h_l * w_l, C_l)}, h_l x w_l being that block's level,
        in execution order. The timestep is 0 in PersonaLive.
        """
        b = latent.shape[0]
        dtype = self.dtype
        names = self._block_names
        banks: dict[str, torch.Tensor] = {}
        cond = _Cond(context=clip_embeds.to(dtype), num_frames=1, backend=self.attention_backend, bank_out=banks)
        temb = _time_embedding(self, timestep, b, b, latent.device, dtype)

        x = self.conv_in(latent.to(dtype))
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, temb, cond)
            skips.extend(s)
        x = self.mid_block(x, temb, cond)
        for block in self.up_blocks:
            for j, resnet in enumerate(block.resnets):
                x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
                if block.attentions is None:
                    continue
                attn = block.attentions[j]
                if len(banks) == len(names) - 1:
                    # The last bank: only its LayerNorm1 tokens are needed; nothing after it is used.
                    banks[attn.transformer_blocks[0].block_name] = attn.bank_tokens(x)
                    return banks
                x = attn(x, cond)
            x = block.upsample(x, skips[-1] if skips else None)
        return banks
