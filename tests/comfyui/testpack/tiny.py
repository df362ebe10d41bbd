"""Tiny random-init ComfyUI objects (Route A): an SD-style UNet, CLIP, VAE and ControlNet at width 32.

Same classes ComfyUI builds from real SD 1.5 files (BaseModel/ModelPatcher, CLIP, VAE, ControlNet),
at a size a 2-core CPU samples in milliseconds. ComfyUI's layers skip weight init, so every
parameter is filled from a seeded generator. Latent 4×h×w, images 8× larger.
"""

from __future__ import annotations

import torch

WIDTH = 32

UNET_CONFIG = dict(image_size=8, in_channels=4, out_channels=4, model_channels=WIDTH, num_res_blocks=[1, 1],
                   channel_mult=[1, 2], transformer_depth=[0, 1], transformer_depth_output=[0, 0, 1, 1],
                   transformer_depth_middle=1, use_spatial_transformer=True, context_dim=WIDTH, legacy=False,
                   use_linear_in_transformer=True, adm_in_channels=None, use_checkpoint=False)
VAE_DDCONFIG = dict(double_z=True, z_channels=4, resolution=64, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 1, 1],
                    num_res_blocks=1, attn_resolutions=[], dropout=0.0)
CLIP_CONFIG = dict(num_hidden_layers=1, hidden_size=WIDTH, intermediate_size=64, num_attention_heads=2,
                   projection_dim=WIDTH)


def init_weights(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded init of every parameter: small normal noise, then torch's own init where it exists
    (ComfyUI's ops classes disable reset_parameters, so call the torch base class's). Runs in the
    caller's mode: under inference_mode the weights stay inference tensors, as a loader node's do."""
    bases = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm,
             torch.nn.Embedding)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for p in module.parameters():
            p.normal_(0.0, 0.02)
        for m in module.modules():
            for base in bases:
                if isinstance(m, base):
                    base.reset_parameters(m)
                    break
    return module


def tiny_model(seed: int = 0):
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models_base

    class TinySD(comfy.supported_models_base.BASE):
        unet_config = UNET_CONFIG
        unet_extra_config = {"num_heads": 2, "num_head_channels": -1}
        latent_format = comfy.latent_formats.SD15

    cfg = TinySD({**UNET_CONFIG, "dtype": torch.float32})
    cfg.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.BaseModel(cfg, device=torch.device("cpu"))
    init_weights(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def tiny_clip(seed: int = 1):
    import comfy.sd
    import comfy.sd1_clip
    from comfy.supported_models_base import ClipTarget

    clip = comfy.sd.CLIP(ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel),
                         model_options={"clip_l_model_config": CLIP_CONFIG, "dtype": torch.float32})
    init_weights(clip.cond_stage_model, seed)
    return clip


def tiny_vae(seed: int = 2):
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ae = AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=4)
    init_weights(ae, seed)
    return comfy.sd.VAE(sd=ae.state_dict(), config={"params": {"ddconfig": VAE_DDCONFIG, "embed_dim": 4}},
                        dtype=torch.float32)


def tiny_controlnet(seed: int = 3):
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.ops

    keys = ("in_channels", "model_channels", "num_res_blocks", "channel_mult", "transformer_depth",
            "transformer_depth_middle", "use_spatial_transformer", "context_dim", "legacy", "use_linear_in_transformer",
            "adm_in_channels", "use_checkpoint", "image_size")
    cfg = {k: UNET_CONFIG[k] for k in keys}
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, num_heads=2, dtype=torch.float32,
                                     operations=comfy.ops.disable_weight_init, device=torch.device("cpu"), **cfg)
    init_weights(net, seed)
    return comfy.controlnet.ControlNet(net, load_device=mm.get_torch_device())


# Real-format files: the smallest checkpoint ComfyUI's stock loaders accept as SD 1.5 (its width 320
# and context 768 are what SD15 detection checks; the depth is free) with a TAESD-format VAE, and a
# ControlNet of the same shape in the original ("control_model.") layout.
SD15_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1],
                 channel_mult=[1], transformer_depth=[1], transformer_depth_output=[1, 1], transformer_depth_middle=1,
                 use_spatial_transformer=True, context_dim=768, legacy=False, use_linear_in_transformer=False,
                 adm_in_channels=None, use_checkpoint=False, num_heads=8, num_head_channels=-1)


def sd15_checkpoint_state(seed: int = 10) -> dict[str, torch.Tensor]:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.taesd.taesd import TAESD

    unet = init_weights(UNetModel(dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init,
                                  **SD15_UNET), seed)
    vae = init_weights(TAESD(), seed + 1)
    state = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    state.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
    return {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}


def sd15_controlnet_state(seed: int = 12) -> dict[str, torch.Tensor]:
    import comfy.cldm.cldm
    import comfy.ops

    cfg = {k: v for k, v in SD15_UNET.items() if k not in ("out_channels", "transformer_depth_output")}
    net = init_weights(comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=torch.float32, device="cpu",
                                                  operations=comfy.ops.disable_weight_init, **cfg), seed)
    return {f"control_model.{k}": v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}


def tiny_clip_l(seed: int = 11):
    """A one-layer CLIP-L-width text encoder (SD 1.5 conditioning is 768 wide; a real one is 123 M
    parameters, this one is mostly the 49408 x 768 token table)."""
    import comfy.sd
    import comfy.sd1_clip
    from comfy.supported_models_base import ClipTarget

    config = dict(num_hidden_layers=1, hidden_size=768, intermediate_size=128, num_attention_heads=2,
                  projection_dim=768)
    clip = comfy.sd.CLIP(ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel),
                         model_options={"clip_l_model_config": config, "dtype": torch.float32})
    init_weights(clip.cond_stage_model, seed)
    return clip
