"""The world's shipped model architecture and its runtime names: what loading a world folder needs to know.

The training stages (`train*.py`, `tiny_decoder.py`) build models from these configs; the loader (`models.py`),
the jobs and the node pack read the runtime names (which decoder guides, where the tiny decoder lives). This
module imports nothing of the world's training code, so loading never pulls a training stage in.

Configs (docs/world.md "The shipped models"): an SD-1.x-shaped diffusers pipeline shrunk for 64 px images —
AutoencoderKL with 4x down-sampling into 8 channels, a 3-stage UNet2DConditionModel with cross-attention
(mapped key-for-key onto ComfyUI's own UNetModel by `COMFYUI_UNET_CONFIG`), a ControlNet whose hint embedding
down-samples 4x, a 2-layer CLIP text encoder over a word-level tokenizer of the family names only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(16, 32, 64), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=8,
    sample_size=64, mid_block_add_attention=False)
VAE_DOWNSAMPLE = 4  # 2 ** (len(block_out_channels) - 1)
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=16, in_channels=8, out_channels=8, layers_per_block=1, block_out_channels=(32, 64, 128),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
    attention_head_dim=8, norm_num_groups=32)
# The same UNet as ComfyUI's native openaimodel.UNetModel config; keys map with
# comfy.utils.unet_to_diffusers(COMFYUI_UNET_CONFIG) (checked against ComfyUI 0.3.75, docs/world.md).
COMFYUI_UNET_CONFIG: dict[str, Any] = dict(
    image_size=16, in_channels=8, out_channels=8, model_channels=32, num_res_blocks=[1, 1, 1], channel_mult=[1, 2, 4],
    transformer_depth=[0, 1, 1], transformer_depth_output=[0, 0, 1, 1, 1, 1], transformer_depth_middle=1,
    context_dim=64, num_heads=8, num_head_channels=-1, use_linear_in_transformer=False, use_spatial_transformer=True,
    legacy=False, adm_in_channels=None)


def with_latent_channels(config: dict[str, Any], channels: int) -> dict[str, Any]:
    """`config` (VAE_CONFIG, UNET_CONFIG or COMFYUI_UNET_CONFIG) for a latent of `channels` channels instead of 8.
    finebirds uses 16 (TrainConfig.latent_channels): with 8, its VAE lost the 1-2 px markings that define its
    species (the oracle kept 0.708 of round trips); the same reason SD3 and Flux moved from 4 to 16 channels. Only
    the UNet's first and last convolutions grow, so diffusion costs the same."""
    if "latent_channels" in config:
        return {**config, "latent_channels": int(channels)}
    return {**config, "in_channels": int(channels), "out_channels": int(channels)}


CONTROLNET_EMBEDDING = (16, 32, 64)  # 3 stages: the 64 px hint is down-sampled 4x to the latent size
TEXT_CONFIG: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                   max_position_embeddings=16, projection_dim=64)
MAX_TOKENS = 16
SCHEDULER_CONFIG: dict[str, Any] = dict(  # SD 1.x training schedule; DDIM with SD's spacing
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    timestep_spacing="leading")
BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "[UNK]"
TEMPLATE_WORDS = ("a", "an", "photo", "of", "the")

# ---------------------------------------------------------------------------- the tiny guidance decoder
TINY_DECODER_FOLDER = "tiny_decoder"
# What guides the world's classifier path by default (WorldModels.generate, the demo, `higfa augment --model
# builtin`, the world workflow): "tiny" only if measured within 0.03 oracle accuracy of the full VAE
# (python -m benchmarks.speed.world_decoder). The shipped student is, on `higfa` (0.023), not on `higfa-robust` (0.039),
# the preset of the world workflow and the demo's trace (docs/speed.md), so the VAE guides.
GUIDANCE_DEFAULT = "vae"
# 3 stages: 16x16 latent -> 64 px image (the world VAE's 4x), 8 latent channels like the world VAE. TAESD's decoder
# has one width for all stages; its depth goes where the teacher's capacity is, at 16x16 (the VAE decoder: 64
# channels, 9 convolutions there) and 32x32: 8, 3 and 1 blocks. A block at 16x16 costs 1/16 of one at 64x64, so
# this student's forward + backward (batch 16) is still 0.22 s against the VAE decoder's 0.30 (1 block per stage:
# 0.20 s). Measured (docs/speed.md): 1/1/1 blocks drop the guided oracle accuracy by 0.086, 4/2/1 by 0.055,
# 8/3/1 by 0.031, 12/4/1 by 0.055; 8/3/1 with the marking and leg regions weighted x17 (tiny_decoder.py) by 0.023.
TINY_DECODER_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=8, encoder_block_out_channels=(32, 32, 32),
    decoder_block_out_channels=(32, 32, 32), num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(8, 3, 1),
    upsampling_scaling_factor=2, act_fn="relu", scaling_factor=1.0, shift_factor=0.0)


def load_tiny_decoder(path: Path, device: str | torch.device = "cpu"):
    """The shipped AutoencoderTiny of a world folder in float32, or None when the folder has none."""
    if not (Path(path) / TINY_DECODER_FOLDER / "config.json").is_file():
        return None
    from diffusers import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(Path(path) / TINY_DECODER_FOLDER, torch_dtype=torch.float32,
                                           low_cpu_mem_usage=False).to(
        device).eval().requires_grad_(False)


# ---------------------------------------------------------------------------- text
def build_tokenizer(families: list[str]):
    """Word-level tokenizer over the template words and FAMILY names only: species words are [UNK].
    Pads with the end token to MAX_TOKENS (as SD 1.x's CLIP tokenizer does)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [UNK, BOS, "<|pad_unused|>", EOS, *TEMPLATE_WORDS, *families]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]),
                                                                                               (EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=EOS,
                                   model_max_length=MAX_TOKENS)


def build_text_encoder(tokenizer, seed: int):
    """A freshly initialised CLIPTextModel (TEXT_CONFIG) over `tokenizer`'s vocabulary, seeded."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TEXT_CONFIG)
    torch.manual_seed(seed)
    return CLIPTextModel(cfg)


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids [B, MAX_TOKENS] (padded with the end token, truncated)."""
    return tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                     return_tensors="pt").input_ids


def write_model_index(out: Path) -> None:
    """The diffusers `model_index.json` of a world folder (a StableDiffusionControlNetPipeline)."""
    import diffusers

    index = {"_class_name": "StableDiffusionControlNetPipeline", "_diffusers_version": diffusers.__version__,
             "controlnet": ["diffusers", "ControlNetModel"], "feature_extractor": [None, None],
             "image_encoder": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=1))
