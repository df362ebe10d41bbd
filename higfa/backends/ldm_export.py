"""Write diffusers models as one single-file checkpoint in the original LDM key layout.

This is the inverse of diffusers' own single-file conversion (`diffusers.loaders.single_file_utils`:
`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`,
`convert_controlnet_checkpoint`), which ships only the LDM -> diffusers direction. The key
mapping follows diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py`, generalised
from SD 1.5's fixed 4 levels x 2 layers to any UNet2DConditionModel / AutoencoderKL config, so
tiny test models and real ones both round-trip through `from_single_file`.

Prefixes: UNet `model.diffusion_model.`, VAE `first_stage_model.`, CLIP text encoder
`cond_stage_model.transformer.`, ControlNet `control_model.`. SDXL (`save_single_file_sdxl`): the text encoders
are `conditioner.embedders.0.transformer.` (CLIP-L, transformers layout) and `conditioner.embedders.1.model.`
(OpenCLIP layout, the inverse of diffusers' `convert_open_clip_checkpoint`), the added-conditioning MLP
`label_emb.0.{0,2}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_TIME_AND_IO = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _rename(key: str, prefixes: Mapping[str, str]) -> str | None:
    """Longest matching diffusers prefix -> its LDM prefix (None when no prefix matches)."""
    for hf in sorted(prefixes, key=len, reverse=True):
        if key == hf or key.startswith(hf + "."):
            return prefixes[hf] + key[len(hf):]
    return None


def _resnet_suffix(rest: str) -> str:
    for hf, ldm in _RESNET:
        if rest.startswith("." + hf + "."):
            return "." + ldm + rest[len(hf) + 1:]
    return rest


def _unet_block_prefixes(config: Mapping[str, Any], up: bool = True) -> tuple[dict[str, str], dict[str, str]]:
    """(resnet prefixes, other prefixes) diffusers -> LDM for the down, mid (and up) blocks."""
    levels = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    layers = layers if isinstance(layers, int) else layers[0]
    res, other = {}, {}
    for i in range(levels):
        for j in range(layers):
            n = i * (layers + 1) + j + 1
            res[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{n}.0"
            other[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{n}.1"
        other[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (layers + 1)}.0.op"
        if up:
            has_attn = "CrossAttn" in config["up_block_types"][i]
            for j in range(layers + 1):
                n = i * (layers + 1) + j
                res[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{n}.0"
                other[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{n}.1"
            other[f"up_blocks.{i}.upsamplers.0.conv"] = \
                f"output_blocks.{i * (layers + 1) + layers}.{2 if has_attn else 1}.conv"
    res["mid_block.resnets.0"], res["mid_block.resnets.1"] = "middle_block.0", "middle_block.2"
    other["mid_block.attentions.0"] = "middle_block.1"
    return res, other


def _convert_unet_like(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], extra: Mapping[str, str],
                       up: bool) -> dict[str, torch.Tensor]:
    res, other = _unet_block_prefixes(config, up)
    fixed = {**_TIME_AND_IO, **extra}
    out = {}
    for key, value in state.items():
        new = _rename(key, fixed)
        if new is None:
            hf = next((p for p in sorted(res, key=len, reverse=True) if key.startswith(p + ".")), None)
            if hf is not None:
                new = res[hf] + _resnet_suffix(key[len(hf):])
            else:
                new = _rename(key, other)
        if new is None:
            raise ValueError(f"no LDM name for diffusers key {key!r}: this exporter covers SD 1.x/2.x-style UNets")
        out[new] = value
    return out


_ADDED_EMBEDDING = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def unet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict -> LDM `model.diffusion_model.*` keys (prefix not added). SDXL's
    added-conditioning MLP (`add_embedding`) becomes `label_emb.0`."""
    return _convert_unet_like(state, config, _ADDED_EMBEDDING, up=True)


def controlnet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """ControlNetModel state dict -> LDM `control_model.*` keys (prefix not added)."""
    n_blocks = len(config["conditioning_embedding_out_channels"]) * 2 - 2
    extra = {"controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_cond_embedding.conv_out": f"input_hint_block.{2 * n_blocks + 2}",
             "controlnet_mid_block": "middle_block_out.0"}
    for k in range(n_blocks):
        extra[f"controlnet_cond_embedding.blocks.{k}"] = f"input_hint_block.{2 * k + 2}"
    levels, layers = len(config["block_out_channels"]), config["layers_per_block"]
    for k in range(levels * (layers + 1)):
        extra[f"controlnet_down_blocks.{k}"] = f"zero_convs.{k}.0"
    return _convert_unet_like(state, config, extra, up=False)


def vae_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict -> LDM `first_stage_model.*` keys (prefix not added).
    Mid-block attention linears become 1x1 convolutions, as in the original."""
    levels = len(config["block_out_channels"])
    prefixes = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    for part in ("encoder", "decoder"):
        for k in range(2):
            prefixes[f"{part}.mid_block.resnets.{k}"] = f"{part}.mid.block_{k + 1}"
        prefixes[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
    for i in range(levels):
        prefixes[f"encoder.down_blocks.{i}.resnets"] = f"encoder.down.{i}.block"
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0"] = f"encoder.down.{i}.downsample"
        prefixes[f"decoder.up_blocks.{i}.resnets"] = f"decoder.up.{levels - 1 - i}.block"
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0"] = f"decoder.up.{levels - 1 - i}.upsample"
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in state.items():
        new = _rename(key, prefixes) or key
        if ".mid.attn_1." in new:
            head, _, rest = new.partition(".mid.attn_1.")
            rest = next((attn[a] + rest[len(a):] for a in attn if rest.startswith(a + ".")), rest)
            new = f"{head}.mid.attn_1.{rest}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        out[new.replace("conv_shortcut", "nin_shortcut")] = value
    return out


def clip_to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel state dict -> `cond_stage_model.transformer.*` keys (prefix not
    added). transformers >= 5.6 dropped the `text_model.` level; LDM keeps it."""
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()
            if not k.endswith("position_ids")}


_OPEN_CLIP_LAYER = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                    ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj"))


def open_clip_to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModelWithProjection state dict -> OpenCLIP keys (SDXL's `conditioner.embedders.1.model.`,
    prefix not added): q/k/v stacked into `attn.in_proj_*`, the projection stored transposed (OpenCLIP
    multiplies x @ text_projection)."""
    state = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    out = {"positional_embedding": state.pop("embeddings.position_embedding.weight"),
           "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           "text_projection": state.pop("text_projection.weight").T.contiguous()}
    for part in ("weight", "bias"):
        out[f"ln_final.{part}"] = state.pop(f"final_layer_norm.{part}")
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        hf, ldm = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[ldm + f"attn.in_proj_{part}"] = torch.cat([state.pop(hf + f"self_attn.{q}_proj.{part}")
                                                           for q in "qkv"])
            for a, b in _OPEN_CLIP_LAYER:
                out[ldm + f"{b}.{part}"] = state.pop(hf + f"{a}.{part}")
    if state:
        raise ValueError(f"no OpenCLIP name for {sorted(state)[:3]}: this exporter covers CLIP text encoders")
    return out


def save_single_file_sdxl(path: str | Path, unet, vae, text_encoder, text_encoder_2) -> Path:
    """One SDXL `.safetensors` in the original (SGM) layout, what ComfyUI, A1111 and diffusers'
    `StableDiffusionXLPipeline.from_single_file` read. SDXL ControlNets ship as diffusers folders."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    sd: dict[str, torch.Tensor] = {}
    for prefix, part in (("model.diffusion_model.", unet_to_ldm(unet.state_dict(), unet.config)),
                         ("first_stage_model.", vae_to_ldm(vae.state_dict(), vae.config)),
                         ("conditioner.embedders.0.transformer.", clip_to_ldm(text_encoder.state_dict())),
                         ("conditioner.embedders.1.model.", open_clip_to_ldm(text_encoder_2.state_dict()))):
        sd.update({prefix + k: v.detach().cpu().contiguous() for k, v in part.items()})
    save_file(sd, str(path))
    return path


def save_single_file(path: str | Path, unet, vae, text_encoder, controlnet=None) -> Path:
    """One `.safetensors` in the LDM layout (what ComfyUI, A1111 and `from_single_file` read).
    A ControlNet, when given, goes to its own file next to it (`<name>.controlnet.safetensors`)."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    sd: dict[str, torch.Tensor] = {}
    for prefix, part in (("model.diffusion_model.", unet_to_ldm(unet.state_dict(), unet.config)),
                         ("first_stage_model.", vae_to_ldm(vae.state_dict(), vae.config)),
                         ("cond_stage_model.transformer.", clip_to_ldm(text_encoder.state_dict()))):
        sd.update({prefix + k: v.detach().cpu().contiguous() for k, v in part.items()})
    save_file(sd, str(path))
    if controlnet is not None:
        cn = controlnet_to_ldm(controlnet.state_dict(), controlnet.config)
        save_file({"control_model." + k: v.detach().cpu().contiguous() for k, v in cn.items()},
                  str(path.with_suffix(".controlnet.safetensors")))
    return path
