"""Load the generation components from local paths only, and encode prompts.

A `StableDiffusionControlNetPipeline`-compatible set (UNet, ControlNet, VAE, CLIP text encoder +
tokenizer, scheduler), or SDXL's (`StableDiffusionXLControlNetPipeline`: a second text encoder + tokenizer,
the UNet's added size/crop conditioning) from

- a diffusers folder: model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/, and
  controlnet/ unless a separate ControlNet path is given; or
- a single-file SD checkpoint (.safetensors / .ckpt, original LDM layout) plus a local diffusers
  config folder (`config`: the same folder layout, configs + tokenizer; weights not needed),
  converted by diffusers' own `from_single_file`.

The ControlNet is a diffusers folder (config.json + weights) or a single file (original layout:
its config comes from `controlnet_config`, or is derived from the UNet with `ControlNetModel.from_unet`).
Nothing here reaches the network: every loader gets `local_files_only=True`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

SCHEDULERS = {  # short names -> diffusers classes; any other diffusers scheduler class name works too
    "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler", "pndm": "PNDMScheduler",
    "heun": "HeunDiscreteScheduler", "lms": "LMSDiscreteScheduler", "ddpm": "DDPMScheduler",
}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
FOLDER_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_PARTS = ("text_encoder_2", "tokenizer_2")  # loaded when model_index.json names them (SDXL)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass
class Components:
    """What one HiGFA generation needs. `controlnet` may be None (presets without the contour)."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    controlnet: Any = None
    source: dict[str, str] = field(default_factory=dict)  # where each part came from (run records)
    text_encoder_2: Any = None  # SDXL: CLIPTextModelWithProjection (second half of the tokens + pooled vector)
    tokenizer_2: Any = None

    def __post_init__(self):
        if self.is_sdxl and self.text_encoder_2 is None:
            raise ValueError("the UNet takes SDXL's added conditioning (addition_embed_type 'text_time') but the model "
                             "has no text_encoder_2/tokenizer_2: pass an SDXL base model (a refiner alone is not "
                             "supported)")

    @property
    def is_sdxl(self) -> bool:
        """An SDXL-class UNet: pooled text + size/crop ids through `added_cond_kwargs`."""
        return getattr(self.unet.config, "addition_embed_type", None) == "text_time"

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        """The image size the UNet was configured for (512 for SD 1.5)."""
        s = self.unet.config.sample_size
        return int(s if isinstance(s, int) else s[0]) * self.vae_scale

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32,
           vae_dtype: torch.dtype = torch.float32) -> "Components":
        """Move to a device. The VAE keeps its own dtype (float32 by default): the classifier gradient
        runs through its decoder, and SD's VAE overflows in float16."""
        for name in ("unet", "controlnet", "text_encoder", "text_encoder_2"):
            m = getattr(self, name)
            if m is not None:
                setattr(self, name, m.to(device=device, dtype=dtype).eval().requires_grad_(False))
        self.vae = self.vae.to(device=device, dtype=vae_dtype).eval().requires_grad_(False)
        return self

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """`encode_prompts` with this set's tokenizer and text encoder."""
        return encode_prompts(self.tokenizer, self.text_encoder, prompts)

    def text_conditioning(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tokens [N, L, D], pooled [N, P] or None): SD 1.x/2.x `encode_prompts` and no pooled vector; SDXL
        `encode_prompts_sdxl` (both encoders)."""
        if self.text_encoder_2 is None:
            return self.encode_prompts(prompts), None
        return encode_prompts_sdxl((self.tokenizer, self.tokenizer_2), (self.text_encoder, self.text_encoder_2),
                                   prompts)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str]) -> torch.Tensor:
    """Text-encoder last hidden states [N, L, D] float32 for N prompts (SD 1.x style), padded to the
    tokenizer's length (77 for SD). float32 whatever the encoder's dtype: the denoisers cast to the
    UNet's. The one prompt encoder of `Components` and the built-in world's `WorldModels`."""
    tok = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    return text_encoder(tok.input_ids.to(text_encoder.device))[0].float()


@torch.no_grad()
def encode_prompts_sdxl(tokenizers, text_encoders, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's text conditioning, as diffusers' `StableDiffusionXLPipeline.encode_prompt` (no clip skip): tokens
    [N, 77, D1 + D2] = both encoders' penultimate hidden states side by side, pooled [N, P] = the second
    (projection) encoder's text embedding. float32."""
    states, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        pooled = out[0]
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1).float(), pooled.float()


def sdxl_time_ids(size: int) -> torch.Tensor:
    """SDXL's size/crop conditioning [1, 6] for a square `size` image: original size, crop (0, 0), target size
    (what diffusers' SDXL pipelines pass by default)."""
    return torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)


# ---------------------------------------------------------------------------- errors
def _missing(what: str, path: Path, fix: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} not found: {path}. {fix}")


MODEL_FIX = ("Pass --model a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) "
             "or a single-file SD checkpoint (.safetensors/.ckpt) together with --config DIR")


# ---------------------------------------------------------------------------- loading
def load_components(model: str | Path, *, controlnet: str | Path | None = None, config: str | Path | None = None,
                    controlnet_config: str | Path | None = None, scheduler: str = "ddim",
                    scheduler_options: dict[str, Any] | None = None, need_controlnet: bool = True) -> Components:
    """Load on the CPU in float32 (move with `Components.to`).

    model: diffusers folder or single-file checkpoint (the jobs resolve the CLI's 'builtin' to the
    built-in world's folder first: `higfa.jobs.model_path`). controlnet: overrides the
    folder's controlnet/. config: the diffusers config folder a single file needs. scheduler: a
    short name of `SCHEDULERS` or a diffusers scheduler class name, built from the model's
    scheduler config (+ `scheduler_options`, e.g. {"set_alpha_to_one": True}).
    need_controlnet: raise when no ControlNet is found (the schedule uses the contour).
    """
    _quiet_loaders()
    model = Path(model).expanduser()
    if not model.exists():
        raise _missing("model", model, MODEL_FIX)
    if model.is_dir():
        parts = _load_folder(model)
    elif model.suffix.lower() in SINGLE_FILE_SUFFIXES:
        parts = _load_single_file(model, config)
    else:
        raise ValueError(f"model {model} is neither a folder nor a checkpoint file "
                         f"({', '.join(SINGLE_FILE_SUFFIXES)}). "
                         + MODEL_FIX)
    parts["scheduler"] = make_scheduler(parts["scheduler"].config, scheduler, scheduler_options)
    if controlnet is not None:
        parts["controlnet"] = load_controlnet(controlnet, parts["unet"], controlnet_config)
        parts["source"]["controlnet"] = str(Path(controlnet).expanduser().resolve())
    if need_controlnet and parts.get("controlnet") is None:
        raise FileNotFoundError(f"no ControlNet: {model} has no controlnet/ folder and no --controlnet was given. "
                                "The contour needs one (e.g. a Canny ControlNet for SD 1.5): pass --controlnet PATH, "
                                "or choose --preset cfg, which uses text guidance only")
    return Components(**parts)


def _quiet_loaders() -> None:
    """No per-component progress bars or hub chatter in a dataset job."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _read_model_index(folder: Path) -> dict[str, Any]:
    index = folder / "model_index.json"
    if not index.is_file():
        raise _missing("model_index.json", index, "A diffusers folder has model_index.json at its top. " + MODEL_FIX)
    try:
        return json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{index} is not valid JSON ({e}): re-save the pipeline with save_pretrained") from e


def _component_class(index: dict[str, Any], name: str, default: tuple[str, str]):
    import importlib

    entry = index.get(name) or default
    library, cls = entry if entry[0] else default
    return getattr(importlib.import_module(library), cls)


def _load_folder(folder: Path) -> dict[str, Any]:
    index = _read_model_index(folder)
    for part in FOLDER_PARTS:
        if not (folder / part).is_dir():
            raise _missing(f"'{part}' of the diffusers folder", folder / part,
                           f"The folder needs {', '.join(p + '/' for p in FOLDER_PARTS)} "
                           "(as written by save_pretrained)")
    defaults = {"unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
                "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
                "scheduler": ("diffusers", "DDIMScheduler"), "controlnet": ("diffusers", "ControlNetModel")}
    parts: dict[str, Any] = {"source": {"model": str(folder.resolve())}}
    sdxl = [p for p in SDXL_PARTS if (index.get(p) or [None])[0]]
    for part in sdxl:
        if not (folder / part).is_dir():
            raise _missing(f"'{part}' of the SDXL folder", folder / part,
                           "model_index.json names it: the folder needs it (as written by save_pretrained)")
    defaults.update({"text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
                     "tokenizer_2": ("transformers", "CLIPTokenizer")})
    for part in (*FOLDER_PARTS, *sdxl):
        cls = _component_class(index, part, defaults[part])
        parts[part] = _from_pretrained(cls, folder / part)
    cn = folder / "controlnet"
    parts["controlnet"] = _from_pretrained(_component_class(index, "controlnet", defaults["controlnet"]), cn) \
        if cn.is_dir() else None
    return parts


def _from_pretrained(cls, path: Path):
    """from_pretrained of one component folder; falls back to an fp16 weights variant if that is all there is."""
    try:
        return cls.from_pretrained(str(path), local_files_only=True)
    except (OSError, EnvironmentError) as e:
        if any(path.glob("*.fp16.*")):
            return cls.from_pretrained(str(path), local_files_only=True, variant="fp16")
        raise FileNotFoundError(f"could not load {cls.__name__} from {path}: {e}. The folder needs its config and "
                                "weights as written by save_pretrained") from e


def _load_single_file(path: Path, config: str | Path | None) -> dict[str, Any]:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if config is None:
        raise ValueError(f"single-file checkpoint {path}: pass --config DIR, a local diffusers folder of the same "
                         "architecture (model_index.json, unet/ vae/ text_encoder/ scheduler/ configs and tokenizer/; "
                         "weights not needed, e.g. a stable-diffusion-v1-5 download). Nothing is fetched from the hub")
    config = Path(config).expanduser()
    if not config.is_dir():
        raise _missing("config folder for the single-file checkpoint", config,
                       "Pass --config a local diffusers folder of the same architecture (configs + tokenizer)")
    index = _read_model_index(config)
    sdxl = "XL" in str(index.get("_class_name", ""))  # StableDiffusionXL(ControlNet)Pipeline
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", *(SDXL_PARTS if sdxl else ())):
        if not (config / part).is_dir():
            raise _missing(f"'{part}' config", config / part, f"--config {config} must have the diffusers layout")
    try:
        if sdxl:
            pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(config), local_files_only=True,
                                                              add_watermarker=False)
        else:
            pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True,
                                                            safety_checker=None, feature_extractor=None,
                                                            requires_safety_checker=False)
    except Exception as e:  # diffusers raises many types for a wrong layout
        raise ValueError(f"could not convert single-file checkpoint {path} with config {config}: {e}. It must be an "
                         f"{'SDXL' if sdxl else 'SD 1.x/2.x'} checkpoint in the original layout, matching the config "
                         "folder") from e
    parts = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder, "tokenizer": pipe.tokenizer,
             "scheduler": pipe.scheduler, "controlnet": None,
             "source": {"model": str(path.resolve()), "config": str(config.resolve())}}
    if sdxl:
        parts.update(text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2)
    return parts


def load_controlnet(path: str | Path, unet=None, config: str | Path | None = None):
    """A ControlNet folder, or a single file (config from `config`, else derived from the UNet)."""
    from diffusers import ControlNetModel

    path = Path(path).expanduser()
    if not path.exists():
        raise _missing("ControlNet", path, "Pass --controlnet a diffusers ControlNet folder (config.json + weights) "
                       "or a single .safetensors file in the original layout")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _missing("ControlNet config", path / "config.json", "A ControlNet folder holds config.json + weights")
        return _from_pretrained(ControlNetModel, path)
    if config is not None:
        return ControlNetModel.from_single_file(str(path), config=str(config), local_files_only=True)
    if unet is None:
        raise ValueError(f"single-file ControlNet {path} needs --controlnet-config DIR (its config.json) or a UNet")
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint, load_single_file_checkpoint

    checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=_hint_channels(checkpoint))
    state = convert_controlnet_checkpoint(checkpoint, cn.config)
    missing, unexpected = cn.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"ControlNet {path} does not fit this UNet (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}): pass --controlnet-config with its config.json")
    return cn


def _hint_channels(checkpoint: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The hint encoder's widths from an original-layout ControlNet: input_hint_block convs 0, 2, ...,
    12 output c0, c0, c1, c1, c2, c2, c3 (SD's (16, 32, 96, 256)); 14 is the projection to the UNet."""
    convs = {}
    for key, w in checkpoint.items():
        m = re.search(r"input_hint_block\.(\d+)\.weight$", key)
        if m:
            convs[int(m.group(1))] = int(w.shape[0])
    outs = [convs[i] for i in sorted(convs)][:-1]
    if len(outs) < 3:
        raise ValueError("the ControlNet file has no input_hint_block: it is not an original-layout ControlNet")
    return tuple(outs[0::2])


def make_scheduler(config: dict[str, Any], name: str = "ddim", options: dict[str, Any] | None = None):
    """A diffusers scheduler of class `name` (short name or class name) from a model's scheduler config."""
    import copy

    import diffusers

    cls_name = SCHEDULERS.get(name.lower(), name)
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"scheduler {name!r}: choose one of {sorted(SCHEDULERS)} or a diffusers scheduler class name")
    if not options:
        return _zero_snr_kept(cls.from_config(dict(config)), dict(config), name, cls_name)
    try:  # a bad value surfaces in the constructor or only when timesteps are set: try both here, once
        scheduler = cls.from_config(dict(config), **options)
        copy.deepcopy(scheduler).set_timesteps(2)
    except (ValueError, TypeError, RuntimeError, IndexError, KeyError) as e:
        why = (str(e).strip().splitlines() or [repr(e)])[0][:160]
        raise ValueError(f"--scheduler-options {json.dumps(options)}: the {cls_name} rejects them "
                         f"({type(e).__name__}: {why})") from None
    return _zero_snr_kept(scheduler, {**dict(config), **options}, name, cls_name)


def _zero_snr_kept(scheduler, config: dict[str, Any], name: str, cls_name: str):
    """The scheduler, unless the config asks for zero terminal SNR (v-prediction models trained with
    `rescale_betas_zero_snr`) and the class ignores the option (PNDM, Heun, LMS keep SD's table)."""
    if config.get("rescale_betas_zero_snr") and float(scheduler.alphas_cumprod[-1]) > 1e-6:
        raise ValueError(f"scheduler {name!r} ({cls_name}) does not implement rescale_betas_zero_snr, which the "
                         "model's scheduler config (or --scheduler-options) sets: its noise table would not be the one "
                         "the model was trained on. Choose one of ddim, euler, euler_a, dpmpp_2m, unipc, ddpm")
    return scheduler


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"dtype {name!r}: choose one of {sorted(set(DTYPES))}") from None
