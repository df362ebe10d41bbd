"""A complete tiny Stable-Diffusion + ControlNet pipeline on disk, random init, built offline.

`higfa.testing.stand_ins` has the UNet, ControlNet and VAE; this adds a CLIP text encoder and a CLIP BPE
tokenizer small enough to build without the hub (its vocabulary is CLIP's 256 byte symbols, with
and without the end-of-word mark, and no merges: it tokenises per character), and writes them in
the diffusers folder layout with diffusers' own `save_pretrained`. Tests and benchmarks load the
folder through exactly the code path a real SD 1.5 folder takes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .stand_ins import CONTEXT_DIM, tiny_controlnet, tiny_unet, tiny_vae

MAX_TOKENS = 77  # SD's prompt length


def tiny_tokenizer(max_length: int = MAX_TOKENS):
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_text_encoder(tokenizer, seed: int = 5, hidden: int = CONTEXT_DIM):
    from transformers import CLIPTextConfig, CLIPTextModel

    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
                         bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=eos,
                         pad_token_id=eos)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(cfg).eval()


def tiny_scheduler(**options):
    """SD 1.x's training noise schedule and timestep convention, as a DDIM scheduler. options: other config
    entries, e.g. a v-prediction zero-SNR model's {"prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1, **options)


def tiny_components(seed: int = 0, latent_size: int = 8, scheduler_options: dict | None = None) -> dict:
    """unet, controlnet, vae, text_encoder, tokenizer, scheduler (a `StableDiffusionControlNetPipeline` set)."""
    unet = tiny_unet(seed, latent_size)
    tokenizer = tiny_tokenizer()
    return {"unet": unet, "controlnet": tiny_controlnet(unet, seed + 1), "vae": tiny_vae(seed + 2),
            "text_encoder": tiny_text_encoder(tokenizer, seed + 5), "tokenizer": tokenizer,
            "scheduler": tiny_scheduler(**(scheduler_options or {}))}


def save_tiny_pipeline(folder: str | Path, seed: int = 0, latent_size: int = 8, controlnet: bool = True,
                       scheduler_options: dict | None = None) -> Path:
    """Write the tiny pipeline as a diffusers folder (model_index.json, unet/, controlnet/, vae/,
    text_encoder/, tokenizer/, scheduler/). scheduler_options: see `tiny_scheduler` (v-prediction).
    Returns the folder."""
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline

    parts = tiny_components(seed, latent_size, scheduler_options)
    common = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if controlnet:
        pipe = StableDiffusionControlNetPipeline(**parts, **common)
    else:
        parts.pop("controlnet")
        pipe = StableDiffusionPipeline(**parts, **common)
    folder = Path(folder)
    pipe.save_pretrained(str(folder))
    return folder
