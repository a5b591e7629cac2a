"""The reference UNet: the appearance "write" pass (spec §1.4, §2.2).

The SD-1.5 2-D UNet (same blocks and keys as diffusers' `UNet2DConditionModel`) without
`conv_norm_out` / `conv_out`: 682 state-dict keys, exactly the official `reference_unet.pth`. It runs once
per reference image (and once per historical keyframe) at timestep 0 with the CLIP image embedding as the
cross-attention context, and returns, for every spatial transformer block, the LayerNorm1 output (the
tokens that feed that block's self-attention): the "bank". The denoising UNet pairs banks with its own
blocks by module path (`attention_block_names()`), which is identical in both networks. The banks are read
with forward hooks on the stock blocks' ``norm1`` for the duration of one call, so they do not depend on
the attention processor in use.

Skipping the tail is exact: a bank only depends on what runs before it, so the forward stops as soon as the
last bank (up_blocks.3.attentions.2 in SD-1.5) is written, and does not compute that block's attention,
the rest of the up path or the output head, whose result nobody reads.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config

from personalive_cli.models.denoising_unet import DenoisingUNetConfig, UNetBase
from personalive_cli.models.modeling_utils import accepts_config_dataclass, dataclass_from_config
from personalive_cli.models.unet_blocks import UNetConditioning, bank_tokens, time_embedding

__all__ = ["ReferenceUNet"]


class ReferenceUNet(UNetBase):
    """banks = ReferenceUNet(latent (b, 4, h, w), clip_embeds (b, n, 768)) -> {block name: (b, L, C)}.

    Arguments: the 2-D fields of `DenoisingUNetConfig` (``cfg.spatial_dict()``), or one `DenoisingUNetConfig`
    (its motion/temporal fields are ignored).
    """

    @accepts_config_dataclass(DenoisingUNetConfig, DenoisingUNetConfig.spatial_dict)
    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block: int = 2,
        attention_heads: int = 8,
        cross_attention_dim: int = 768,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        transformer_norm_eps: float = 1e-6,
        flip_sin_to_cos: bool = True,
        freq_shift: float = 0.0,
        downsample_padding: int = 1,
    ) -> None:
        super().__init__()
        cfg = dataclass_from_config(DenoisingUNetConfig, self.config)
        self.register_to_config(**cfg.spatial_dict())  # JSON lists back to tuples
        self.build_body(cfg, video=False)

    def forward(
        self, latent: torch.Tensor, clip_embeds: torch.Tensor, timestep: torch.Tensor | float | int = 0
    ) -> dict[str, torch.Tensor]:
        """latent (b, 4, h, w) (VAE mean x 0.18215), clip_embeds (b, n, cross_attention_dim).

        Returns {block name: LayerNorm1 tokens (b, h_l * w_l, C_l)}, h_l x w_l being that block's level,
        in execution order. The timestep is 0 in PersonaLive.
        """
        b = latent.shape[0]
        dtype = self.dtype
        names = self.attention_block_names()
        banks: dict[str, torch.Tensor] = {}
        hooks = [
            self.get_submodule(name).norm1.register_forward_hook(
                lambda _mod, _args, out, name=name: banks.__setitem__(name, out)
            )
            for name in names[:-1]
        ]
        try:
            cond = UNetConditioning(context=clip_embeds.to(dtype), num_frames=1)
            temb = time_embedding(self, timestep, b, b, latent.device, dtype)
            x, skips = self.encode(self.conv_in(latent.to(dtype)), temb, cond)
            for block in self.up_blocks:
                for j, resnet in enumerate(block.resnets):
                    h = torch.cat([x, skips.pop()], dim=1)
                    if block.attentions is not None and block.bank_names[j] == names[-1]:
                        # The last bank: only its LayerNorm1 tokens are needed; nothing after it is used.
                        banks[names[-1]] = bank_tokens(block.attentions[j], resnet(h, temb))
                        return {name: banks[name] for name in names}
                    x = block.checkpointed(block.layer, j, h, temb, cond)
                x = block.upsample(x, skips[-1] if skips else None)
        finally:
            for hook in hooks:
                hook.remove()
        raise RuntimeError("the last spatial transformer block was never reached")
