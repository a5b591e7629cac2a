"""Configs of the public base models, as plain data, so the full-size architecture can be built
(e.g. with random weights for speed measurements) without downloading anything.

Values are those of ``stabilityai/sd-vae-ft-mse`` and of the CLIP ViT-L/14 image encoder of
``lambdalabs/sd-image-variations-diffusers``. Tiny variants keep the same structure (a VAE with
four levels, so latents stay 1/8 of the image; a CLIP projecting to the UNet's 768-d context).
"""

SD_VAE_FT_MSE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}

TINY_VAE = {**SD_VAE_FT_MSE, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4}

CLIP_VIT_L14_VISION = {
    "hidden_act": "quick_gelu",
    "hidden_size": 1024,
    "image_size": 224,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-5,
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
}

TINY_CLIP_VISION = {**CLIP_VIT_L14_VISION, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                    "num_hidden_layers": 1, "patch_size": 32}
