"""The built-in tiny world in ComfyUI: its diffusers models as ComfyUI MODEL / VAE / CONTROL_NET,
plus its text encoder, guidance classifier and procedural images (docs/world.md, "In ComfyUI").

Conversion only, through public extension points: the UNet becomes ComfyUI's own openaimodel.UNetModel
(world.json's `comfyui_unet_config`, keys mapped with comfy.utils.unet_to_diffusers); the 8-channel,
4x AutoencoderKL and the ControlNet (whose hint block down-samples 4x) have no ComfyUI class, so they
are wrapped: a comfy.sd.VAE subclass and a comfy.controlnet.ControlBase subclass. Weights are made
outside inference mode, so the HiGFA guider's gradient path can copy and differentiate them.
"""

from __future__ import annotations

import difflib
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import comfy.controlnet
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base
import comfy.utils
import folder_paths
import numpy as np
import torch

from ..higfa.classifier import find_name
from ..higfa.world.birds import SPLITS, TinyBirds, model_path
from ._comfy import CATEGORY, CLASSIFIER, WORLD, io

# diffusers beta_schedule -> ComfyUI's name for the same betas ("linear" there is SD's scaled_linear)
_BETAS = {"scaled_linear": "linear", "linear": "sqrt_linear", "squaredcos_cap_v2": "cosine"}
_PREDICTION = {"epsilon": comfy.model_base.ModelType.EPS, "v_prediction": comfy.model_base.ModelType.V_PREDICTION}


# ----------------------------------------------------------------------------- the world's text side
@dataclass
class LoadedWorld:
    """What HiGFA World Loader hands to the text and image nodes: the procedural world, its
    word-level tokenizer and CLIP text encoder (family words only; species words are unknown)."""

    world: TinyBirds
    text_encoder: torch.nn.Module
    tokenizer: object
    path: Path

    @property
    def class_names(self) -> list[str]:
        return self.world.class_names

    @torch.no_grad()
    def encode(self, text: str) -> torch.Tensor:
        """[1, L, D] last hidden states (SD 1.x convention: after the final layer norm, padded to L)."""
        ids = self.tokenizer([text], padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(ids.to(device))[0].float()

    def species(self, target: str) -> int:
        """Species index from an index or a name (case, '-', '_' insensitive)."""
        names = self.class_names
        text = str(target).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < len(names):
                raise ValueError(f"species index {index} is out of range: the world has {len(names)} species "
                                 f"(0..{len(names) - 1})")
            return index
        found = find_name(text, names)
        if found is not None:
            return found
        close = difflib.get_close_matches(text, names, n=3)
        raise ValueError(f"{text!r} is not a species of this world. "
                         + (f"Did you mean {close}?" if close else f"Species: {names}"))


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


class WorldVAE(comfy.sd.VAE):
    """A comfy.sd.VAE around a diffusers AutoencoderKL that ComfyUI's VAE class cannot build (8 latent
    channels, 4x down-sampling, 8 norm groups). Stock VAEEncode / VAEDecode and model management
    (its ModelPatcher) work as for any VAE; `first_stage_model.decode` is the raw differentiable decoder."""

    def __init__(self, vae, device=None):
        with _quiet("root"):  # an empty state dict: the base class sets its defaults and stops there
            super().__init__(sd={})
        ratio = 2 ** (len(vae.config.block_out_channels) - 1)
        self.first_stage_model = WorldAutoencoder(vae).eval()
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
def resolve_path(path: str) -> Path:
    """'' -> the built-in world; absolute paths as given; others inside ComfyUI's models folder."""
    text = (path or "").strip()
    if not text:
        return model_path()
    p = Path(text).expanduser()
    return p if p.is_absolute() else Path(folder_paths.models_dir) / p


def load(path: Path):
    """(MODEL, VAE, CONTROL_NET, classifier, LoadedWorld) from a world folder (docs/world.md's format)."""
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
        world = LoadedWorld(m.world, m.text_encoder, m.tokenizer, path)
    return model, vae, control, m.guidance, world


# ----------------------------------------------------------------------------- nodes
class HiGFAWorldLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_WorldLoader",
            display_name="HiGFA World Loader (built-in tiny world)",
            category=f"{CATEGORY}/world",
            description="Loads the built-in tiny world shipped with the pack (no downloads): a 64 px 'tiny birds' "
                        "diffusion model that knows bird families but not species, its contour ControlNet, an "
                        "8-channel 4x VAE, and the few-shot guidance classifier of its 16 species. Use HiGFA "
                        "World Empty Latent for its latents (64 px = 16x16 latent).",
            inputs=[io.String.Input("path", default="", optional=True,
                                    tooltip="Empty: the built-in world. Otherwise a folder written by `higfa "
                                            "train-world --out` (absolute, or inside ComfyUI's models folder).")],
            outputs=[io.Model.Output(display_name="MODEL"), io.Vae.Output(display_name="VAE"),
                     io.ControlNet.Output(display_name="CONTROL_NET", tooltip="The contour ControlNet (Canny "
                                                                              "edges at 64 px, white on black)."),
                     CLASSIFIER.Output(display_name="classifier", tooltip="The few-shot guidance classifier "
                                                                          "(10 real images per species)."),
                     WORLD.Output(display_name="world", tooltip="Text encoder and images of this world: "
                                                                "HiGFA World Text Encode, HiGFA World Image."),
                     io.String.Output(display_name="class_names", tooltip="The 16 species, one per line.")],
        )

    @classmethod
    def fingerprint_inputs(cls, path: str = "", **_):
        # Reload when the world is retrained (`higfa train-world`), not only when the path changes.
        root = resolve_path(path)
        files = sorted(root.rglob("*")) if root.is_dir() else []
        return repr([(str(f.relative_to(root)), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file()])

    @classmethod
    def execute(cls, path: str = "") -> io.NodeOutput:
        model, vae, control, classifier, world = load(resolve_path(path))
        return io.NodeOutput(model, vae, control, classifier, world, "\n".join(world.class_names))


class HiGFAWorldTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_WorldTextEncode",
            display_name="HiGFA World Text Encode",
            category=f"{CATEGORY}/world",
            description="CONDITIONING from the built-in world's text encoder. It knows 'a photo of a finch / "
                        "warbler / jay / dove' (the families), not the species: other words are unknown tokens. "
                        "Use '' as the negative prompt.",
            inputs=[WORLD.Input("world", tooltip="From HiGFA World Loader."),
                    io.String.Input("text", default="a photo of a finch",
                                    tooltip="A family prompt, e.g. HiGFA World Image's prompt output; '' for the "
                                            "negative (unconditional) branch. At most 14 words.")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, world: LoadedWorld, text: str) -> io.NodeOutput:
        cond = world.encode(text).to(mm.intermediate_device())
        return io.NodeOutput([[cond, {}]])


class HiGFAWorldImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_WorldImage",
            display_name="HiGFA World Image",
            category=f"{CATEGORY}/world",
            description="A real image of one species, drawn by the procedural world (no input files): the source "
                        "of the contour, with the species name (the classifier's target) and its family prompt.",
            inputs=[io.String.Input("species", default="red-crowned finch",
                                    tooltip="A species name (e.g. 'spectacled warbler') or its index 0-15."),
                    io.Int.Input("index", default=0, min=0, max=9999,
                                 tooltip="Which image of that species in the split (the fewshot split has the "
                                         "10 'real' images the guidance classifier was trained on: 0-9)."),
                    io.Combo.Input("split", options=list(SPLITS), default="fewshot",
                                   tooltip="fewshot: the few real images per species. train / test / val: other, "
                                           "disjoint images."),
                    WORLD.Input("world", optional=True, tooltip="From HiGFA World Loader (default: the built-in "
                                                                "world's generator).")],
            outputs=[io.Image.Output(display_name="image", tooltip="[1,64,64,3]"),
                     io.String.Output(display_name="species", tooltip="The species name: connect to the "
                                                                      "sampler's target."),
                     io.String.Output(display_name="prompt", tooltip="Its family prompt, e.g. 'a photo of a "
                                                                     "finch': connect to HiGFA World Text Encode."),
                     io.Int.Output(display_name="species_index")],
        )

    @classmethod
    def execute(cls, species: str, index: int, split: str, world: LoadedWorld | None = None) -> io.NodeOutput:
        birds = world.world if world is not None else TinyBirds()
        label = (world or LoadedWorld(birds, None, None, model_path())).species(species)
        labels, seeds = birds.split_seeds(split, index + 1)
        seed = int(seeds[labels == label][index])
        image = birds.render(label, seed, masks=False).image
        tensor = torch.from_numpy(np.ascontiguousarray(image)).float().div(255.0).unsqueeze(0)
        return io.NodeOutput(tensor.to(mm.intermediate_device()), birds.class_names[label], birds.prompt(label), label)


class HiGFAWorldEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_WorldEmptyLatent",
            display_name="HiGFA World Empty Latent",
            category=f"{CATEGORY}/world",
            description="An empty latent sized for a VAE: its channels and down-sampling (the built-in world's: 8 "
                        "channels, 4x, so 64 px is 16x16; EmptyLatentImage assumes SD's 4 channels and 8x).",
            inputs=[io.Vae.Input("vae", tooltip="The VAE that will decode it (HiGFA World Loader's)."),
                    io.Int.Input("width", default=64, min=16, max=4096, step=16, tooltip="Image width in pixels."),
                    io.Int.Input("height", default=64, min=16, max=4096, step=16, tooltip="Image height in pixels."),
                    io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Images per run.")],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, vae, width: int, height: int, batch_size: int) -> io.NodeOutput:
        ratio = vae.spacial_compression_encode()
        shape = (batch_size, vae.latent_channels, height // ratio, width // ratio)
        return io.NodeOutput({"samples": torch.zeros(shape, device=mm.intermediate_device())})


NODES = [HiGFAWorldLoader, HiGFAWorldTextEncode, HiGFAWorldImage, HiGFAWorldEmptyLatent]
