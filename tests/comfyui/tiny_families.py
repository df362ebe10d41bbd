"""Tiny random-init stand-ins (Route A) for every model family: SD 1.x EPS (the reference), an SDXL-class UNet
(EPS, SDXL latent format, pooled text + size ids through `adm`), an SD 1.x v-prediction UNet and an SD3-class
MMDiT (flow matching, CONST sampling, 16-channel latents, shift 3), each with the family's own ControlNet class
and a VAE of its latent width, and a guidance-distilled Flux-class DiT (no ControlNet). ComfyUI's own model
classes (model_base.BaseModel / SDXL / SD3 / Flux, cldm and mmdit ControlNets) at a size a 2-core CPU samples
in well under a second.

Text conditioning is made directly (seeded tensors of the family's shapes), not by a text encoder: the
tests compare guiders on identical conditioning, and the SDXL / SD3 text encoders have no tiny config.
Call these under torch.inference_mode(), as loader nodes run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from testpack.tiny import UNET_CONFIG, VAE_DDCONFIG, init_weights

CONTEXT = 32  # width of the text tokens
POOLED = 32  # width of the pooled text vector (SDXL, SD3)
TOKENS = 8

SDXL_UNET = {**UNET_CONFIG, "adm_in_channels": POOLED + 6 * 256,  # pooled text + 6 size/crop ids of 256
             "num_classes": "sequential"}
SD3_MMDIT = dict(in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None, adm_in_channels=POOLED,
                 context_embedder_config={"target": "torch.nn.Linear",
                                          "params": {"in_features": CONTEXT, "out_features": 128}},
                 num_patches=64, pos_embed_max_size=8, pos_embed_scaling_factor=None, qk_norm=None,
                 x_block_self_attn_layers=[])


@dataclass
class Family:
    name: str
    sampling: str  # what HiGFA must read from its model_sampling
    model: object  # ModelPatcher
    vae: object
    control_net: object
    positive: list
    negative: list
    channels: int


def family(name: str, seed: int = 0) -> Family:
    build = {"sd1": _sd1, "sdxl": _sdxl, "sd1_vpred": _sd1_vpred, "sd3": _sd3, "flux": _flux}[name]
    return build(seed)


def _patcher(model):
    import comfy.model_management as mm
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def conditioning(seed: int, pooled: bool, width: int = CONTEXT) -> tuple[list, list]:
    """(positive, negative) CONDITIONING of the family's shapes: tokens [1, 8, width], a pooled vector if any."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        extra = {"pooled_output": torch.randn(1, POOLED, generator=g)} if pooled else {}
        out.append([[torch.randn(1, TOKENS, width, generator=g), extra]])
    return out[0], out[1]


def _vae(seed: int, channels: int):
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    dd = {**VAE_DDCONFIG, "z_channels": channels}
    ae = init_weights(AutoencoderKL(ddconfig=dd, embed_dim=channels), seed)
    vae = comfy.sd.VAE(sd=ae.state_dict(), config={"params": {"ddconfig": dd, "embed_dim": channels}},
                       dtype=torch.float32)
    vae.latent_channels = channels  # a config-built VAE assumes 4
    return vae


def _unet_model(config_class, model_class, unet: dict, seed: int, **kw):
    cfg = config_class({**unet, "dtype": torch.float32})
    cfg.set_inference_dtype(torch.float32, None)
    model = model_class(cfg, device=torch.device("cpu"), **kw)
    init_weights(model.diffusion_model, seed)
    return model


def _cldm(unet: dict, seed: int):
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.ops

    keys = ("in_channels", "model_channels", "num_res_blocks", "channel_mult", "transformer_depth",
            "transformer_depth_middle", "use_spatial_transformer", "context_dim", "legacy", "use_linear_in_transformer",
            "adm_in_channels", "use_checkpoint", "image_size", "num_classes")
    config = {k: unet[k] for k in keys if k in unet}
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, num_heads=2, dtype=torch.float32, device=torch.device("cpu"),
                                     operations=comfy.ops.disable_weight_init, **config)
    init_weights(net, seed)
    return comfy.controlnet.ControlNet(net, load_device=mm.get_torch_device())


def _sdxl(seed: int) -> Family:
    import comfy.model_base
    import comfy.supported_models

    class TinySDXL(comfy.supported_models.SDXL):
        unet_config = SDXL_UNET
        unet_extra_config = {"num_heads": 2, "num_head_channels": -1}

    model = _unet_model(TinySDXL, comfy.model_base.SDXL, SDXL_UNET, seed)
    return Family("sdxl", "eps", _patcher(model), _vae(seed + 2, 4), _cldm(SDXL_UNET, seed + 3),
                  *conditioning(seed + 1, pooled=True), 4)


def _sd1(seed: int, model_type: str = "EPS") -> Family:
    """SD 1.x at the tiny width: EPS (the measured reference family) or V_PREDICTION (same x, another output)."""
    import comfy.latent_formats
    import comfy.model_base
    import comfy.supported_models_base

    class TinySD1(comfy.supported_models_base.BASE):
        unet_config = UNET_CONFIG
        unet_extra_config = {"num_heads": 2, "num_head_channels": -1}
        latent_format = comfy.latent_formats.SD15

    model = _unet_model(TinySD1, comfy.model_base.BaseModel, UNET_CONFIG, seed,
                        model_type=getattr(comfy.model_base.ModelType, model_type))
    name, sampling = ("sd1", "eps") if model_type == "EPS" else ("sd1_vpred", "v_prediction")
    return Family(name, sampling, _patcher(model), _vae(seed + 2, 4), _cldm(UNET_CONFIG, seed + 3),
                  *conditioning(seed + 1, pooled=False), 4)


def _sd1_vpred(seed: int) -> Family:
    return _sd1(seed, "V_PREDICTION")


def _sd3(seed: int) -> Family:
    import comfy.cldm.mmdit
    import comfy.controlnet
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.ops
    import comfy.supported_models

    class TinySD3(comfy.supported_models.SD3):
        unet_config = SD3_MMDIT

    model = _unet_model(TinySD3, comfy.model_base.SD3, SD3_MMDIT, seed)
    _fill_buffers(model.diffusion_model, seed)
    net = comfy.cldm.mmdit.ControlNet(num_blocks=2, control_latent_channels=16, dtype=torch.float32,
                                      device=torch.device("cpu"), operations=comfy.ops.disable_weight_init,
                                      **SD3_MMDIT)
    init_weights(net, seed + 3)
    _fill_buffers(net, seed + 3)
    latent_format = comfy.latent_formats.SD3()
    latent_format.shift_factor = 0  # as comfy.controlnet.load_controlnet_mmdit does for SD3 ControlNets
    cnet = comfy.controlnet.ControlNet(net, compression_ratio=1, latent_format=latent_format,
                                       load_device=mm.get_torch_device())
    return Family("sd3", "const", _patcher(model), _vae(seed + 2, 16), cnet, *conditioning(seed + 1, pooled=True), 16)


FLUX_DIT = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=POOLED, context_in_dim=CONTEXT,
                hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12],
                theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)


def _flux(seed: int) -> Family:
    """A guidance-distilled Flux-class model (Flux.1-dev's layout: double + single stream blocks, a guidance
    embedding, ModelSamplingFlux). Its conditioning carries FluxGuidance's value (3.5); no ControlNet (ComfyUI's
    Flux ControlNets are third-party formats), so its tests use presets without the contour."""
    import dataclasses

    import comfy.model_base
    import comfy.supported_models
    from comfy.ldm.flux.model import FluxParams

    config = dict(FLUX_DIT)
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(FluxParams)}:
        # newer ComfyUI (0.33.0) requires the field; its model_detection sets [] for a Flux.1 file (0.3.75 has none)
        config["txt_ids_dims"] = []

    class TinyFlux(comfy.supported_models.Flux):
        unet_config = config

    model = _unet_model(TinyFlux, comfy.model_base.Flux, config, seed)
    pos, neg = conditioning(seed + 1, pooled=True)
    pos, neg = ([[t, {**d, "guidance": 3.5}] for t, d in c] for c in (pos, neg))
    return Family("flux", "const", _patcher(model), _vae(seed + 2, 16), None, pos, neg, 16)


def _fill_buffers(module: torch.nn.Module, seed: int) -> None:
    """MMDiT's pos_embed is an uninitialised buffer (a real checkpoint stores it): fill it too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, b in module.named_buffers():
            if name.endswith("pos_embed"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.02)


# the family's TAESD and its latent width
TAESD = {"sd1": ("taesd", 4), "sdxl": ("taesdxl", 4), "sd1_vpred": ("taesd", 4), "sd3": ("taesd3", 16),
         "flux": ("taef1", 16)}


def write_taesd(folder, name: str, channels: int, seed: int = 5) -> None:
    """TAESD's own two files (`<name>_encoder.safetensors`, `<name>_decoder.safetensors`: the state dicts of its
    Sequential encoder / decoder), random init, as the stock VAE Loader reads them from models/vae_approx."""
    from comfy.taesd.taesd import Decoder, Encoder
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for part, net in (("encoder", Encoder(latent_channels=channels)), ("decoder", Decoder(latent_channels=channels))):
        init_weights(net, seed)
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()},
                  str(folder / f"{name}_{part}.safetensors"))


# ----------------------------------------------------------------------------- real-format files (stock loaders)
def sd3_checkpoint_state(seed: int = 20) -> dict[str, torch.Tensor]:
    """A single-file SD3-class checkpoint CheckpointLoaderSimple detects as SD3 (an MMDiT with 16 latent channels;
    depth 2, i.e. width 128) with a TAESD3-format VAE (its scale/shift as the taesd3 loader sets them) and no text
    encoder (a real one is T5-XXL + two CLIPs; the tests give conditioning of the checkpoint's widths)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper
    from comfy.taesd.taesd import TAESD

    net = OpenAISignatureMMDITWrapper(dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init,
                                      **SD3_MMDIT)
    init_weights(net, seed)
    _fill_buffers(net, seed)
    vae = init_weights(TAESD(latent_channels=16), seed + 1)
    with torch.no_grad():
        vae.vae_scale.fill_(1.5305)
        vae.vae_shift.fill_(0.0609)
    state = {f"model.diffusion_model.{k}": v for k, v in net.state_dict().items()}
    state.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
    return {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}


def sd3_controlnet_state(seed: int = 22) -> dict[str, torch.Tensor]:
    """An SD3 ControlNet in diffusers' layout (transformer_blocks.*, pos_embed_input.*, controlnet_blocks.*), the
    format ControlNetLoader reads with load_controlnet_mmdit: ComfyUI's own key map, inverted."""
    import comfy.cldm.mmdit
    import comfy.ops
    import comfy.utils

    net = comfy.cldm.mmdit.ControlNet(num_blocks=2, control_latent_channels=16, dtype=torch.float32, device="cpu",
                                      operations=comfy.ops.disable_weight_init, **SD3_MMDIT)
    init_weights(net, seed)
    _fill_buffers(net, seed)
    ours = {k: v.detach() for k, v in net.state_dict().items()}
    out, used = {}, set()
    for theirs, target in comfy.utils.mmdit_to_diffusers({"depth": 2, "num_blocks": 2}).items():
        name = target if isinstance(target, str) else target[0]
        if name not in ours:
            continue
        used.add(name)
        if isinstance(target, str):
            out[theirs] = ours[name]
        elif target[1] is not None:  # one of q, k, v sliced out of the fused qkv
            dim, start, length = target[1]
            out[theirs] = ours[name].narrow(dim, start, length)
        else:  # stored with its scale/shift halves swapped; swapping is its own inverse
            out[theirs] = target[2](ours[name])
    out.update({k: v for k, v in ours.items() if k not in used})  # same name in both layouts (loader keeps them)
    return {k: v.to(torch.float16).contiguous() for k, v in out.items()}
