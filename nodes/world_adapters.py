"""The built-in tiny world's diffusers models as ComfyUI MODEL / VAE / CONTROL_NET (the model side;
the four world nodes are in nodes/world.py, docs/world.md "In ComfyUI").

Conversion only, through public extension points: the UNet becomes ComfyUI's own openaimodel.UNetModel
(world.json's `comfyui_unet_config`, keys mapped with comfy.utils.unet_to_diffusers); the 8-channel,
4x AutoencoderKL and the ControlNet (whose hint block down-samples 4x) have no ComfyUI class, so they
are wrapped: a comfy.sd.VAE subclass and a comfy.controlnet.ControlBase subclass. Weights are made
outside inference mode, so the HiGFA guider's gradient path can copy and differentiate them.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import comfy.controlnet
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base
import comfy.utils
import torch

from ..higfa.world.birds import TinyBirds

# diffusers beta_schedule -> ComfyUI's name for the same betas ("linear" there is SD's scaled_linear)
_BETAS = {"scaled_linear": "linear", "linear": "sqrt_linear", "squaredcos_cap_v2": "cosine"}
_PREDICTION = {"epsilon": comfy.model_base.ModelType.EPS, "v_prediction": comfy.model_base.ModelType.V_PREDICTION}


# ----------------------------------------------------------------------------- MODEL
def world_model(unet, unet_config: dict, scheduler_config: dict, sigmas: torch.Tensor, latent_format):
    """ComfyUI's own UNetModel with the diffusers UNet's weights, an SD 1.x-style ModelSamplingDiscrete
    on the world's sigma table, and the world's latent format, in a ModelPatcher."""
    betas = scheduler_config.get("beta_schedule", "scaled_linear")
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if betas not in _BETAS or prediction not in _PREDICTION:
        raise ValueError(f"world scheduler: beta_schedule {betas!r} / prediction_type {prediction!r} not supported "
                         f"(supported: {sorted(_BETAS)} / {sorted(_PREDICTION)})")
    if unet.config.in_channels != unet_config["in_channels"]:
        raise ValueError(f"world.json's comfyui_unet_config has in_channels {unet_config['in_channels']} but "
                         f"unet/config.json has {unet.config.in_channels}: world.json is stale, retrain the world")

    class WorldUNet(comfy.supported_models_base.BASE):
        unet_extra_config = {}  # world.json's config is complete (num_heads, num_head_channels)
        sampling_settings = {"beta_schedule": _BETAS[betas],
                             "linear_start": scheduler_config.get("beta_start", 0.00085),
                             "linear_end": scheduler_config.get("beta_end", 0.012),
                             "timesteps": scheduler_config.get("num_train_timesteps", 1000)}
        supported_inference_dtypes = [torch.float32]
        memory_usage_factor = 1.0

        def model_type(self, state_dict, prefix=""):
            return _PREDICTION[prediction]

        def inpaint_model(self):
            return False  # 8 latent channels is this VAE's latent, not SD-inpainting's image + mask

    WorldUNet.latent_format = latent_format
    config = WorldUNet(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device=mm.unet_offload_device())
    names = comfy.utils.unet_to_diffusers(config.unet_config)
    source = unet.state_dict()
    state = {names[k]: v.to(torch.float32) for k, v in source.items() if k in names}
    want = set(model.diffusion_model.state_dict())
    missing, unknown = sorted(want - set(state)), sorted(set(source) - set(names))
    if missing or unknown:
        raise ValueError(f"the world's UNet does not map onto ComfyUI's UNetModel with world.json's config: "
                         f"missing {missing[:5]}, unmapped {unknown[:5]}")
    model.load_model_weights(state, "")
    model.model_sampling.set_sigmas(sigmas.float())  # exactly the core's table (same betas, float64 there)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def world_latent_format(channels: int, scale_factor: float, rgb: torch.Tensor | None = None,
                        rgb_bias: torch.Tensor | None = None) -> type:
    """A LatentFormat class for this VAE: its channel count and scaling_factor (ComfyUI's LATENT is
    unscaled; the sampler multiplies by scale_factor), and linear latent -> RGB factors for previews."""
    attrs = {"latent_channels": int(channels), "scale_factor": float(scale_factor), "latent_dimensions": 2}
    if rgb is not None:
        attrs["latent_rgb_factors"] = rgb.tolist()
        attrs["latent_rgb_factors_bias"] = rgb_bias.tolist()
    return type("HiGFAWorldLatent", (comfy.latent_formats.LatentFormat,), attrs)


@torch.no_grad()
def fit_preview_factors(vae, world: TinyBirds, scale_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares linear map from the scaled latent (what previews get) to the 4x-pooled image in
    [-1, 1], on a few world images: ComfyUI's Latent2RGB previews for this latent space."""
    images = world.split("fewshot", 2).images
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    z = vae.encode(x.to(vae.dtype)).latent_dist.mean.float() * scale_factor
    target = torch.nn.functional.avg_pool2d(x, x.shape[-1] // z.shape[-1])
    a = torch.cat([z.movedim(1, -1).reshape(-1, z.shape[1]), torch.ones(z[:, :1].numel(), 1)], 1)
    sol = torch.linalg.lstsq(a, target.movedim(1, -1).reshape(-1, 3)).solution
    return sol[:-1], sol[-1]


# ----------------------------------------------------------------------------- VAE
class WorldAutoencoder(torch.nn.Module):
    """The diffusers AutoencoderKL's parts with ComfyUI's first_stage_model interface: encode(x in
    [-1,1]) -> unscaled latent (the posterior mean), decode(z) -> image in [-1,1] (a tensor)."""

    def __init__(self, vae):
        super().__init__()
        self.encoder, self.quant_conv = vae.encoder, vae.quant_conv
        self.post_quant_conv, self.decoder = vae.post_quant_conv, vae.decoder
        self.latent_channels = int(vae.config.latent_channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments[:, :self.latent_channels]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


class WorldTinyAutoencoder(torch.nn.Module):
    """The world's distilled AutoencoderTiny (higfa/world/tiny_decoder.py) with the same interface. TAESD's
    convention: it reads and writes the latent the UNet sees, ComfyUI's VAE the unscaled one, so the world
    VAE's scaling factor is applied on the way in (decode) and out (encode)."""

    def __init__(self, tiny, scaling_factor: float):
        super().__init__()
        self.encoder, self.decoder, self.scale = tiny.encoder, tiny.decoder, float(scaling_factor)
        self.latent_channels = int(tiny.config.latent_channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) / self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z * self.scale)


class WorldVAE(comfy.sd.VAE):
    """A comfy.sd.VAE around a diffusers AutoencoderKL that ComfyUI's VAE class cannot build (8 latent
    channels, 4x down-sampling, 8 norm groups). Stock VAEEncode / VAEDecode and model management
    (its ModelPatcher) work as for any VAE; `first_stage_model.decode` is the raw differentiable decoder.
    `first_stage`: another autoencoder of the same latent geometry in its place (the world's tiny decoder)."""

    def __init__(self, vae, device=None, first_stage: torch.nn.Module | None = None):
        with _quiet("root"):  # an empty state dict: the base class sets its defaults and stops there
            super().__init__(sd={})
        ratio = 2 ** (len(vae.config.block_out_channels) - 1)
        self.first_stage_model = (first_stage if first_stage is not None else WorldAutoencoder(vae)).eval()
        self.latent_channels, self.downscale_ratio, self.upscale_ratio = int(vae.config.latent_channels), ratio, ratio
        self.latent_dim, self.output_channels = 2, 3
        size = mm.dtype_size
        width = max(vae.config.block_out_channels)
        # Rough peak activations per latent pixel (decoder at full resolution), like the base class's.
        self.memory_used_decode = lambda shape, dtype: 12 * width * shape[2] * shape[3] * ratio**2 * size(dtype)
        self.memory_used_encode = lambda shape, dtype: 12 * width * shape[2] * shape[3] * size(dtype)
        self.working_dtypes = [torch.float32]
        self.device = mm.vae_device() if device is None else device
        self.vae_dtype = mm.vae_dtype(self.device, self.working_dtypes)
        self.first_stage_model.to(self.vae_dtype)
        self.output_device = mm.intermediate_device()
        self.patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, load_device=self.device,
                                                        offload_device=mm.vae_offload_device())
        self.size = None
        self.model_size()


@contextmanager
def _quiet(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ----------------------------------------------------------------------------- CONTROL_NET
class WorldControlModel(torch.nn.Module):
    """The diffusers ControlNetModel as a plain module ModelPatcher can manage (it assigns `.device`,
    which diffusers models expose read-only): (x, timestep, context, hint) -> (down residuals, mid)."""

    def __init__(self, controlnet):
        super().__init__()
        self.controlnet = controlnet

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, x, timestep, context, hint):
        return self.controlnet(x, timestep, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)


class WorldControlNet(comfy.controlnet.ControlBase):
    """A diffusers ControlNetModel as a ComfyUI CONTROL_NET: its hint block takes the contour at image
    resolution (4x the latent), its residuals go to the UNet's skip connections and middle block in
    ComfyUI's order. Strength, timestep range, previous_controlnet chains, copy() and model
    management behave as for ComfyUI's own ControlNet."""

    def __init__(self, control_model: WorldControlModel, patcher=None, compression_ratio: int = 4):
        super().__init__()
        self.control_model = control_model
        self.control_model_wrapped = patcher or comfy.model_patcher.ModelPatcher(
            control_model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        self.load_device = self.control_model_wrapped.load_device
        self.compression_ratio = compression_ratio
        self.model_sampling_current = None

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        prev = None
        if self.previous_controlnet is not None:
            prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
            return prev
        dtype = self.control_model.dtype
        h, w = (s * self.compression_ratio for s in x_noisy.shape[-2:])
        if self.cond_hint is None or tuple(self.cond_hint.shape[-2:]) != (h, w):
            hint = comfy.utils.common_upscale(self.cond_hint_original, w, h, self.upscale_algorithm, "center")
            self.cond_hint = self.preprocess_image(hint).to(x_noisy.device, dtype)
        hint = self.cond_hint
        if hint.shape[0] != x_noisy.shape[0]:
            hint = comfy.controlnet.broadcast_image_to(hint, x_noisy.shape[0], batched_number)
        context = cond.get("crossattn_controlnet", cond["c_crossattn"])
        ms = self.model_sampling_current
        down, mid = self.control_model(ms.calculate_input(t, x_noisy).to(dtype), ms.timestep(t).float(),
                                       mm.cast_to_device(context, x_noisy.device, dtype), hint)
        return self.control_merge({"middle": [mid], "output": list(down)}, prev, output_dtype=None)

    def copy(self):
        c = WorldControlNet(self.control_model, self.control_model_wrapped, self.compression_ratio)
        self.copy_to(c)
        return c

    def get_models(self):
        return super().get_models() + [self.control_model_wrapped]

    def pre_run(self, model, percent_to_timestep_function):
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling

    def cleanup(self):
        self.model_sampling_current = None
        super().cleanup()


# ----------------------------------------------------------------------------- loading
def load(path: Path):
    """(MODEL, VAE, CONTROL_NET, guidance VAE or None, the core's WorldModels) from a world folder (docs/world.md's
    format); the guidance VAE is the folder's tiny decoder (tiny_decoder/), when it has one."""
    from ..higfa.world.models import load_world

    # Weights made here are normal tensors (ComfyUI runs nodes under inference mode): the guider's
    # classifier step copies and differentiates the decoder and the classifier.
    with torch.inference_mode(False):
        m = load_world(path)
        info = m.info
        if "comfyui_unet_config" not in info:
            raise ValueError(f"{path}/world.json has no comfyui_unet_config: retrain with `higfa train-world`")
        scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        sf = float(m.vae.config.scaling_factor)
        rgb, bias = fit_preview_factors(m.vae, m.world, sf)
        fmt = world_latent_format(m.vae.config.latent_channels, sf, rgb, bias)
        model = world_model(m.unet, info["comfyui_unet_config"], scheduler, m.noise_schedule.sigmas, fmt)
        vae = WorldVAE(m.vae)
        control = WorldControlNet(WorldControlModel(m.controlnet).eval(), compression_ratio=vae.downscale_ratio)
        tiny = None if m.tiny_decoder is None else WorldVAE(m.vae, first_stage=WorldTinyAutoencoder(m.tiny_decoder, sf))
    return model, vae, control, tiny, m
