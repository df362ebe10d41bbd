"""diffusers models behind the core `Denoiser` protocol (σ form), and a VAE `decode` for guidance.

A UNet2DConditionModel (+ optional ControlNetModel) predicting ε or v in VP form is wrapped so the
reference sampler and the guide see D(x, σ) = x̂0 with x = z/√ᾱ.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..sigmas import NoiseSchedule


def noise_schedule_from_scheduler(scheduler) -> NoiseSchedule:
    """The training noise table of any diffusers scheduler that has `alphas_cumprod`."""
    return NoiseSchedule(torch.as_tensor(scheduler.alphas_cumprod))


class DiffusersDenoiser:
    """D(x, σ) for a diffusers UNet, with text branches and a ControlNet contour: the σ-form wrapper around
    `unet_output`, the one model call that `sample_with_scheduler` makes too.

    embeddings: {"cond": [1 or B, L, D], "uncond": [1 or B, L, D]} text-encoder states.
    contour: [1 or B, 3, H, W] in [0,1] (the ControlNet hint at image resolution), or None.
    Both branches run as one batch. The ControlNet is skipped when the strength is 0.
    """

    def __init__(self, unet, embeddings: dict[str, torch.Tensor], noise_schedule: NoiseSchedule,
                 controlnet=None, contour: torch.Tensor | None = None, prediction_type: str = "epsilon"):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {prediction_type!r}: supported are 'epsilon' and 'v_prediction'")
        if controlnet is not None and contour is None:
            raise ValueError("a ControlNet was given without a contour image: pass contour=[B,3,H,W] in [0,1]")
        self.unet, self.controlnet, self.contour = unet, controlnet, contour
        self.embeddings = embeddings
        self.noise_schedule = noise_schedule
        self.prediction_type = prediction_type

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        t = torch.tensor([self.noise_schedule.timestep(float(s)) for s in sigma.reshape(-1)], dtype=torch.float32)
        # σ of an integer timestep comes back as t ± 1e-4 in float32: snap so ε(t) matches the scheduler's call.
        return torch.where((t - t.round()).abs() < 1e-3, t.round(), t)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, branches: Sequence[str],
                 contour_strength: float, grad: bool = False) -> list[torch.Tensor]:
        """grad: differentiable w.r.t. x (the schedule's `grad_through_denoiser`); otherwise no graph is built."""
        with torch.set_grad_enabled(grad):
            return self._call(x, sigma, branches, contour_strength)

    def _call(self, x, sigma, branches, contour_strength):
        B, n = x.shape[0], len(branches)
        sig = sigma.reshape(-1).to(x.device, torch.float32).expand(B)
        c_in = (sig**2 + 1).rsqrt().reshape(B, 1, 1, 1)
        z = (x * c_in.to(x.dtype)).repeat(n, 1, 1, 1)
        t = self.timestep(sig).to(x.device).repeat(n)
        emb = torch.cat([self._expand(self.embeddings[b], B) for b in branches]).to(x.device, self.unet.dtype)
        hint = None
        if self.controlnet is not None and contour_strength > 0:
            hint = self._expand(self.contour, B).repeat(n, 1, 1, 1).to(x.device)
        out = unet_output(self.unet, z, t, emb, self.controlnet, hint, contour_strength).to(x.dtype)
        xs = x.repeat(n, 1, 1, 1)
        s = sig.repeat(n).reshape(-1, 1, 1, 1).to(x.dtype)
        if self.prediction_type == "epsilon":
            x0 = xs - s * out
        else:  # v: x0 = √ᾱ·z − √(1−ᾱ)·v with z = √ᾱ·x
            a = 1 / (s**2 + 1)
            x0 = a * xs - (1 - a).sqrt() * out
        return list(x0.chunk(n))

    @staticmethod
    def _expand(t: torch.Tensor, B: int) -> torch.Tensor:
        if t.shape[0] == B:
            return t
        if t.shape[0] != 1:
            raise ValueError(f"batch mismatch: got {t.shape[0]} conditioning rows for a batch of {B}")
        return t.expand(B, *t.shape[1:])


def vae_decode(vae, checkpoint: bool = False):
    """Latent x̂0 (scaled, as the UNet sees it) -> image [B,3,H,W] roughly in [0,1], differentiable.

    checkpoint: activation checkpointing in the decoder's blocks (diffusers' gradient checkpointing): the
    backward recomputes each block's forward instead of keeping its activations (less memory, more time).
    It only acts when a gradient is taken, so the final no-grad decode is unchanged.
    """
    if checkpoint:
        vae.enable_gradient_checkpointing()
    scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    shift = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)

    def decode(x0: torch.Tensor) -> torch.Tensor:
        img = vae.decode((x0 / scale + shift).to(vae.dtype)).sample
        return (img.float() + 1) / 2

    return decode


@torch.no_grad()
def decode_uint8(decode, latent: torch.Tensor) -> np.ndarray:
    """Images [B,H,W,3] uint8 (on the CPU) of final latents [B,C,h,w] through `decode` (`vae_decode`'s
    form). The one "sample, then decode to uint8" ending of `higfa augment` and the built-in world."""
    img = decode(latent).clamp(0, 1)
    return (img * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ---------------------------------------------------------------------------- scheduler-driven loop
def unet_output(unet, z: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, controlnet=None,
                hint: torch.Tensor | None = None, contour_strength: float = 0.0,
                added: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Raw UNet prediction (ε, v or x̂0, per its training) for VP input z [N,C,h,w] at timesteps t [N];
    the ControlNet adds its residuals at `contour_strength` (not run at 0). added: SDXL's added conditioning
    {"text_embeds": [N, P], "time_ids": [N, 6]} for the UNet and its ControlNet (None for SD 1.x/2.x)."""
    z = z.to(unet.dtype)
    extra, cond = {}, {}
    if added is not None:
        cond = {"added_cond_kwargs": {k: v.to(z.device, unet.dtype) for k, v in added.items()}}
    if controlnet is not None and hint is not None and contour_strength > 0:
        down, mid = controlnet(z.to(controlnet.dtype), t, encoder_hidden_states=emb.to(controlnet.dtype),
                               controlnet_cond=hint.to(z.device, controlnet.dtype),
                               conditioning_scale=float(contour_strength), return_dict=False, **cond)
        extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    return unet(z, t, encoder_hidden_states=emb.to(unet.dtype), **extra, **cond).sample


def output_to_x0(out: torch.Tensor, z: torch.Tensor, alpha_bar: float, prediction_type: str) -> torch.Tensor:
    """x̂0 from a VP-form prediction: ε: (z − √(1−ᾱ)ε)/√ᾱ; v: √ᾱ·z − √(1−ᾱ)·v; sample: itself."""
    a = torch.tensor(alpha_bar, dtype=torch.float64)
    if prediction_type == "epsilon":
        return ((z.double() - (1 - a).sqrt() * out.double()) / a.sqrt()).to(z.dtype)
    if prediction_type == "v_prediction":
        return (a.sqrt() * z.double() - (1 - a).sqrt() * out.double()).to(z.dtype)
    if prediction_type == "sample":
        return out.to(z.dtype)
    raise ValueError(f"prediction_type {prediction_type!r}: supported are 'epsilon', 'v_prediction' and 'sample'")


def x0_to_output(x0: torch.Tensor, z: torch.Tensor, alpha_bar: float, prediction_type: str) -> torch.Tensor:
    """The inverse of `output_to_x0`: what the scheduler expects, from a (guided) x̂0."""
    a = torch.tensor(alpha_bar, dtype=torch.float64)
    if prediction_type == "sample":
        return x0
    eps = (z.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()
    if prediction_type == "epsilon":
        return eps.to(z.dtype)
    if prediction_type == "v_prediction":
        return (a.sqrt() * eps - (1 - a).sqrt() * x0.double()).to(z.dtype)
    raise ValueError(f"prediction_type {prediction_type!r}: supported are 'epsilon', 'v_prediction' and 'sample'")


def evaluation_sigma(scheduler, index: int, t) -> float:
    """σ (k-diffusion form) of the scheduler's `index`-th evaluation at timestep t.

    σ-based schedulers (Euler, DPM-Solver, UniPC, Heun, ...) keep a `sigmas` table aligned with
    their timesteps: use it, so the x̂0 conversion matches their own. Others (DDIM, PNDM, DDPM)
    evaluate integer timesteps of the training table: σ = sqrt((1 − ᾱ_t)/ᾱ_t).
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and len(sigmas) == len(scheduler.timesteps) + 1:
        return float(sigmas[index])
    ac = float(scheduler.alphas_cumprod[int(round(float(t)))])
    if ac <= 0.0:  # zero terminal SNR (rescale_betas_zero_snr): pure noise, x̂0 comes from v alone
        return math.inf
    return ((1 - ac) / ac) ** 0.5


def sample_with_scheduler(unet, scheduler, noise: torch.Tensor, guide, embeddings: dict[str, torch.Tensor], *,
                          steps: int, controlnet=None, contour: torch.Tensor | None = None, eta: float = 0.0,
                          generator: torch.Generator | list[torch.Generator] | None = None, callback=None,
                          added: dict[str, dict[str, torch.Tensor]] | None = None):
    """HiGFA with any diffusers scheduler (DDIM by default in the CLI): the same `Guide` as the
    reference sampler, per evaluation

        plan = guide.plan(σ, π(σ), i);  x̂0 = CFG at plan.cfg of the branches, ControlNet at plan.contour
        x̂0 = guide.refine(x̂0, plan);    scheduler.step(<ε / v / x̂0 of the refined x̂0>)

    noise [B,4,h,w] (unscaled; multiplied by `init_noise_sigma`), embeddings {"cond", "uncond"}:
    [1 or B, L, D], contour: the ControlNet hint [1 or B, 3, H, W] in [0,1]. `generator` feeds
    stochastic schedulers (DDIM with eta > 0, ancestral), one per sample for batch independence.
    added: SDXL's added conditioning per branch, {"cond": {"text_embeds": [1 or B, P], "time_ids": [1 or B, 6]},
    "uncond": {...}}; None for SD 1.x/2.x. The guide's `sampling` follows the scheduler's prediction_type
    (v_prediction or eps: x = x0 + σ·ε either way; `higfa.families`).
    Returns a `higfa.sampler.SampleResult` (final latent, trace, costs).
    One function (over 80 lines) so the per-step order above reads top to bottom, as in higfa.sampler.sample.
    """
    import inspect
    import time

    from ..guide import Guide
    from ..guidance import cfg_combine
    from ..sampler import COND, UNCOND, SampleResult

    if not isinstance(guide, Guide):
        guide = Guide(guide)
    guide.reset()
    if controlnet is not None and contour is None:
        raise ValueError("a ControlNet was given without a contour image: pass contour=[B,3,H,W] in [0,1]")
    device = noise.device
    B = noise.shape[0]
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    guide.sampling = "v_prediction" if prediction_type == "v_prediction" else "eps"
    ns = noise_schedule_from_scheduler(scheduler)
    scheduler.set_timesteps(steps, device=device)
    accepts = inspect.signature(scheduler.step).parameters
    step_kwargs = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in accepts}
    if eta and "eta" not in accepts:
        raise ValueError(f"eta = {eta}: {type(scheduler).__name__} has no eta; use the DDIM scheduler or eta 0")
    latents = noise * scheduler.init_noise_sigma
    hint = None if contour is None else DiffusersDenoiser._expand(contour, B)
    calls, t_model, step, last_sigma = 0, 0.0, -1, None
    for i, t in enumerate(scheduler.timesteps):
        sigma = evaluation_sigma(scheduler, i, t)
        # p_{k-1} advances once per step: second-order schedulers (Heun, DPM-2) evaluate twice per
        # step and say which evaluation this is; PLMS repeats a timestep (same σ, same step).
        if hasattr(scheduler, "state_in_first_order"):
            step += int(bool(scheduler.state_in_first_order))
        elif last_sigma is None or sigma < last_sigma * (1 - 1e-6):
            step += 1
        last_sigma = sigma
        plan = guide.plan(sigma, ns.sigma_to_percent(sigma), index=step)
        branches = (UNCOND, COND) if plan.cfg != 1.0 else (COND,)
        n = len(branches)
        z = scheduler.scale_model_input(latents, t)
        emb = torch.cat([DiffusersDenoiser._expand(embeddings[b], B) for b in branches]).to(device)
        tt = torch.full((n * B,), float(t), device=device)
        t0 = time.perf_counter()
        hint_n = None if hint is None else hint.repeat(n, 1, 1, 1)
        add = None if added is None else {k: torch.cat([DiffusersDenoiser._expand(added[b][k], B) for b in branches])
                                          for k in added[COND]}
        with torch.no_grad():
            out = unet_output(unet, z.repeat(n, 1, 1, 1), tt, emb, controlnet, hint_n, plan.contour, add).to(z.dtype)
        t_model += time.perf_counter() - t0
        calls += n
        alpha_bar = 1.0 / (1.0 + sigma**2)
        x0s = [output_to_x0(o, z, alpha_bar, prediction_type) for o in out.chunk(n)]
        x0 = cfg_combine(x0s[0], x0s[1], plan.cfg) if n == 2 else x0s[0]
        if guide.schedule.grad_through_denoiser:
            root = alpha_bar**0.5  # the UNet sees z = √ᾱ·x, x the σ-form latent the guide differentiates in

            def denoise(x, tt=tt, emb=emb, hint_n=hint_n, plan=plan, alpha_bar=alpha_bar, root=root, n=n, add=add):
                zz = x * root
                o = unet_output(unet, zz.repeat(n, 1, 1, 1), tt, emb, controlnet, hint_n, plan.contour,
                                add).to(zz.dtype)
                xs = [output_to_x0(c, zz, alpha_bar, prediction_type) for c in o.chunk(n)]
                return cfg_combine(xs[0], xs[1], plan.cfg) if n == 2 else xs[0]

            x0 = guide.refine(x0, plan, z / root, denoise)
        else:
            x0 = guide.refine(x0, plan)
        model_output = x0_to_output(x0, z, alpha_bar, prediction_type)
        latents = scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
        if callback is not None:
            callback(i, latents, x0)
    return SampleResult(latents, guide.trace, guide.costs, calls, {"denoiser": t_model})


# ---------------------------------------------------------------------------- guidance decoder
def decoder_name(vae, role: str = "vae") -> str:
    """How a trace names a decoder: 'vae (AutoencoderKL)', 'guidance_vae (AutoencoderTiny)'."""
    return f"{role} ({type(vae).__name__})"


def load_guidance_vae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A decoder for the classifier path only (local files only), in eval mode without gradients:

    - a diffusers folder of an AutoencoderTiny (TAESD, e.g. madebyollin/taesd) or an AutoencoderKL
      (its config.json names the class), or a pipeline folder with such a `vae/` sub-folder;
    - a TAESD decoder file as ComfyUI keeps it (`models/vae_approx/taesd_decoder.safetensors`, or .pth):
      loaded into an SD-1.x AutoencoderTiny (4 latent channels; the encoder is not on this path).
    `vae_decode` of the result maps the UNet's latent x̂0 to an image in [0,1] for either kind.
    """
    import json

    from diffusers import AutoencoderKL, AutoencoderTiny

    path = Path(path).expanduser()
    if path.is_dir():
        folder = path if (path / "config.json").is_file() else path / "vae"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--guidance-vae {path}: no config.json there nor in {path / 'vae'}; pass a "
                                    "diffusers AutoencoderTiny/AutoencoderKL folder or a taesd_decoder.safetensors")
        try:
            kind = json.loads((folder / "config.json").read_text()).get("_class_name", "AutoencoderKL")
        except (ValueError, AttributeError):
            raise ValueError(f"--guidance-vae {folder}: its config.json is not a diffusers config") from None
        classes = {"AutoencoderTiny": AutoencoderTiny, "AutoencoderKL": AutoencoderKL}
        if kind not in classes:
            raise ValueError(f"--guidance-vae {folder}: a {kind}; supported are {sorted(classes)}")
        try:
            vae = classes[kind].from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:  # diffusers' kinds of 'not a VAE'
            raise ValueError(f"--guidance-vae {folder}: not a loadable {kind} folder "
                             f"({type(e).__name__}: {str(e).strip().splitlines()[0][:160]})") from None
    elif path.is_file():
        vae = _taesd_from_file(path, AutoencoderTiny)
    else:
        raise FileNotFoundError(f"--guidance-vae {path}: no such file or folder")
    return vae.to(device, dtype).eval().requires_grad_(False)


def _taesd_from_file(path: Path, AutoencoderTiny):
    """TAESD's own decoder file (keys of its nn.Sequential: '1.weight', '3.conv.0.weight', ...) -> AutoencoderTiny.

    TAESD's Sequential starts with a Clamp layer that diffusers' DecoderTiny applies in forward(), so
    layer i there is layer i-1 in `decoder.layers`."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception:  # noqa: BLE001 - SafetensorError and friends: not a decoder file either way
            sd = None
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - any other file (pickle opcodes read as KeyError, UnpicklingError, ...)
            sd = None
    if (not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and k.split(".")[0].isdigit() for k in sd)
            or "1.weight" not in sd):
        raise ValueError(f"--guidance-vae {path}: not a TAESD decoder file (keys like '1.weight'); pass a TAESD "
                         "decoder (taesd_decoder.safetensors) or a diffusers AutoencoderTiny/AutoencoderKL folder")
    latent = int(sd["1.weight"].shape[1])
    vae = AutoencoderTiny(latent_channels=latent)
    mapped = {f"layers.{int(k.split('.', 1)[0]) - 1}.{k.split('.', 1)[1]}": v for k, v in sd.items()}
    missing, unexpected = vae.decoder.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise ValueError(f"--guidance-vae {path}: a TAESD-like file whose layers do not match SD's TAESD decoder "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return vae
