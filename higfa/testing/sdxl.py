"""A tiny SDXL + SDXL-ControlNet pipeline on disk, random init, built offline: SDXL's structure at a size a
2-core CPU runs in a second.

What makes it SDXL for diffusers and for `higfa augment`: two text encoders (a `CLIPTextModel`, whose
penultimate hidden states are the first part of the tokens, and a `CLIPTextModelWithProjection`, whose
penultimate states are the second part and whose projected end-of-text vector is the pooled embedding), a
UNet with `addition_embed_type="text_time"` (pooled text + 6 size/crop ids through `add_embedding`), a
ControlNet made from that UNet (same added conditioning) and a VAE with SDXL's scaling factor 0.13025. The two
encoders have different widths, as in SDXL (768 / 1280), so a single-file checkpoint's converter tells them
apart. Saved with diffusers' own `save_pretrained` (folder) or `higfa.backends.ldm_export.save_single_file_sdxl`
(SDXL's original single-file layout).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .pipeline_folder import tiny_text_encoder, tiny_tokenizer
from .stand_ins import tiny_controlnet, tiny_vae

TEXT_1, TEXT_2 = 16, 24  # widths of the two encoders (SDXL: 768, 1280); tokens are TEXT_1 + TEXT_2 wide
TIME_EMBED = 8  # per size/crop id (SDXL: 256)
SDXL_SCALE = 0.13025


def tiny_text_encoder_2(tokenizer, seed: int = 6, hidden: int = TEXT_2):
    """SDXL's second encoder class (OpenCLIP bigG in the real one): hidden states + a projected pooled vector."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    base = tiny_text_encoder(tokenizer, seed, hidden).config.to_dict()
    cfg = CLIPTextConfig(**{**base, "projection_dim": hidden, "hidden_act": "gelu"})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModelWithProjection(cfg).eval()


def tiny_sdxl_unet(seed: int = 0, sample_size: int = 8):
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2), cross_attention_dim=TEXT_1 + TEXT_2, attention_head_dim=8,
            norm_num_groups=8, use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED, projection_class_embeddings_input_dim=TEXT_2 + 6 * TIME_EMBED).eval()


def sdxl_scheduler():
    """SDXL's scheduler config (scaled linear β 0.00085 … 0.012, leading spacing, offset 1) as Euler, its default."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                  beta_end=0.012, steps_offset=1, timestep_spacing="leading")


def tiny_sdxl_components(seed: int = 0, latent_size: int = 8) -> dict:
    """A `StableDiffusionXLControlNetPipeline` set: unet, controlnet, vae, text_encoder(_2), tokenizer(_2),
    scheduler."""
    unet = tiny_sdxl_unet(seed, latent_size)
    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer()
    return {"unet": unet, "controlnet": tiny_controlnet(unet, seed + 1), "vae": tiny_vae(seed + 2, SDXL_SCALE),
            "text_encoder": tiny_text_encoder(tokenizer, seed + 5, TEXT_1), "tokenizer": tokenizer,
            "text_encoder_2": tiny_text_encoder_2(tokenizer_2, seed + 6), "tokenizer_2": tokenizer_2,
            "scheduler": sdxl_scheduler()}


def save_tiny_sdxl_pipeline(folder: str | Path, seed: int = 0, latent_size: int = 8, controlnet: bool = True) -> Path:
    """Write the tiny SDXL pipeline as a diffusers folder (model_index.json, unet/, controlnet/, vae/,
    text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/). Returns the folder."""
    from diffusers import StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline

    parts = tiny_sdxl_components(seed, latent_size)
    if controlnet:
        pipe = StableDiffusionXLControlNetPipeline(**parts, add_watermarker=False)
    else:
        parts.pop("controlnet")
        pipe = StableDiffusionXLPipeline(**parts, add_watermarker=False)
    folder = Path(folder)
    pipe.save_pretrained(str(folder))
    return folder
