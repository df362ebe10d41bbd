"""A guide that sees what it guides: fine-tune a classifier on the diffusion model's own x̂0 predictions.

During stage 2 the guide scores decoded x̂0(z_t) — blurry, off-distribution images — and its
gradient is easily adversarial there. `tune_classifier` fine-tunes a sidecar classifier on the
decoded x̂0 predictions of the user's own real images noised to stage-2 levels (σ drawn
log-uniformly between the schedule's stage boundary and σ_min), plus the clean images, optionally
with small-ε PGD adversarial training on the decoded images (robust classifiers have perceptually
aligned gradients; Kawar et al. 2023). The training loop is `higfa.training.train_classifier`.

    views = x0_predictions(components, images, prompts, boundary=0.7, views=8, seed=0)
    tuned = tune_classifier(clf, images, labels, views.images, labels[views.source], steps=300)

CLI: `higfa tune-classifier NAME --data TRAIN --model builtin|SD --out models/classifiers/NAME_tuned`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..classifier import Classifier
from ..training import Augment, TrainResult, to_tensor, train_classifier


@dataclass
class X0Views:
    images: np.ndarray  # [N·V,H,W,3] uint8: decoded x̂0, V views per source image (source-major)
    source: np.ndarray  # [N·V] index of the source image
    sigmas: np.ndarray  # [N·V] σ of each view


@torch.no_grad()
def x0_predictions(components, images: np.ndarray, prompts: Sequence[str], *, boundary: float = 0.7, views: int = 8,
                   seed: int = 0, cfg: float = 4.0, contour_strength: float = 0.3, negative: str = "", edges=None,
                   batch_size: int = 16) -> X0Views:
    """Decoded x̂0 of real images [N,H,W,3] uint8 (H = W = the model's size) noised to stage-2 levels.

    components: `higfa.backends.components.Components` (UNet, VAE, text encoder, optional ControlNet).
    prompts: one per image. For each image and view: σ log-uniform in [σ_min, σ(boundary)], z = z0 + σ·ε,
    x̂0 = D_uncond + cfg·(D_cond − D_uncond) with the image's own edges (an `EdgeDetector`) on the
    ControlNet at `contour_strength` (the stage-2 low-confidence values by default: where the guide acts
    hardest). Every view depends on (seed, image index, view) only."""
    from ..backends.denoiser import DiffusersDenoiser, noise_schedule_from_scheduler, vae_decode
    from ..contour import EdgeDetector

    if views < 1 or not 0.0 < boundary < 1.0:
        raise ValueError(f"views {views} must be >= 1 and the stage boundary {boundary} in (0, 1)")
    if len(prompts) != len(images):
        raise ValueError(f"x0_predictions: {len(images)} images but {len(prompts)} prompts")
    c = components
    device = c.device
    ns = noise_schedule_from_scheduler(c.scheduler)
    hi, lo = math.log(ns.percent_to_sigma(boundary)), math.log(ns.sigma_min)
    decode = vae_decode(c.vae)
    scale = float(getattr(c.vae.config, "scaling_factor", 1.0) or 1.0)
    shift = float(getattr(c.vae.config, "shift_factor", 0.0) or 0.0)
    detector = edges or EdgeDetector()
    uncond = c.encode_prompts([negative]).float()
    cache: dict[str, torch.Tensor] = {}
    out, src, sig = [], [], []
    jobs = [(i, v) for i in range(len(images)) for v in range(views)]
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b:b + batch_size]
        idx = [i for i, _ in chunk]
        x = to_tensor(np.ascontiguousarray(images[idx])).to(device) * 2 - 1
        z0 = (c.vae.encode(x.to(c.vae.dtype)).latent_dist.mean.float() - shift) * scale
        gens = [torch.Generator().manual_seed((int(seed) * 1_000_003 + i) * 1009 + v) for i, v in chunk]
        sigma = torch.tensor([math.exp(lo + float(torch.rand(1, generator=g)) * (hi - lo)) for g in gens])
        eps = torch.stack([torch.randn(z0.shape[1:], generator=g) for g in gens]).to(device)
        xt = z0 + sigma.to(device).view(-1, 1, 1, 1) * eps
        for p in {prompts[i] for i in idx} - set(cache):
            cache[p] = c.encode_prompts([p]).float()
        emb = {"cond": torch.cat([cache[prompts[i]] for i in idx]), "uncond": uncond}
        hint = None
        if c.controlnet is not None:
            hint = torch.from_numpy(np.stack([detector(np.asarray(images[i])) for i in idx])).float().div(255)
            hint = hint.permute(0, 3, 1, 2).contiguous()
        den = DiffusersDenoiser(c.unet, emb, ns, c.controlnet, hint)
        if cfg == 1.0:
            (x0,) = den(xt, sigma, ["cond"], contour_strength)
        else:
            cond, unc = den(xt, sigma, ["cond", "uncond"], contour_strength)
            x0 = unc + cfg * (cond - unc)
        img = decode(x0).clamp(0, 1)
        out.append((img * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        src += idx
        sig += sigma.tolist()
    return X0Views(np.concatenate(out), np.array(src, dtype=np.int64), np.array(sig, dtype=np.float32))


def resize_uint8(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[N,H,W,3] uint8 -> [N,size,3] uint8 (antialiased area resize, as the classifier does on its input)."""
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    x = to_tensor(images)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=x.shape[-1] > size[1])
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

TUNE_AUGMENT = Augment(noise=0.03, blur=1.0)  # frozen: safe as a shared default


def tune_classifier(classifier: Classifier, images: np.ndarray, labels: np.ndarray, x0_images: np.ndarray,
                    x0_labels: np.ndarray, *, steps: int = 300, batch_size: int = 64, lr: float = 3e-4,
                    augment: Augment | None = TUNE_AUGMENT, adversarial: float = 0.0,
                    adversarial_steps: int = 3, seed: int = 0, **train_kwargs: Any) -> TrainResult:
    """Fine-tune `classifier` (in place) on clean `images` + decoded `x0_images` (uint8 [N,H,W,3], any size:
    resized to its input size) with `higfa.training.train_classifier`; a tenth of the steps warm up."""
    size = classifier.input_size
    x = np.concatenate([resize_uint8(images, size), resize_uint8(x0_images, size)])
    y = np.concatenate([np.asarray(labels), np.asarray(x0_labels)])
    return train_classifier(classifier.float(), x, y, steps=steps, batch_size=batch_size, lr=lr,
                            warmup=max(1, steps // 10), augment=augment, adversarial=adversarial,
                            adversarial_steps=adversarial_steps, seed=seed, **train_kwargs)


@dataclass(frozen=True)
class TuneRecipe:
    """How `tune_guide` tunes (the options of `higfa tune-classifier`, with its defaults)."""

    preset: str = "higfa"  # the schedule preset whose stage boundary, stage-2 cfg and contour strength the x̂0 use
    views: int = 8  # noised x̂0 views per image
    epochs: int = 3  # passes over clean + x̂0 images
    batch_size: int = 64
    lr: float = 3e-4
    augment: str = "robust"  # a `guides.AUGMENT_PRESETS` name
    adversarial: float = 0.0  # PGD ε on the decoded image in [0,1] units (0: off)
    seed: int = 0
    prompt: str | None = None  # template ({class}, {super}, {label}); None: the world's own, else DEFAULT_PROMPT
    super_name: str = "object"
    negative: str = ""

    def check(self) -> None:
        for name in ("epochs", "views", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if self.adversarial < 0 or self.lr <= 0:
            raise ValueError(f"--adversarial {self.adversarial} must be >= 0 and --lr {self.lr} > 0")


@dataclass
class Tuned:
    classifier: Classifier  # the tuned classifier (the one passed in, trained in place)
    steps: int  # optimiser steps it took
    stage_boundary: float  # the preset's stage boundary the x̂0 views were noised below
    images: int  # real images it was tuned on


def tune_guide(classifier: Classifier, model: str, data: str, recipe: TuneRecipe = TuneRecipe(), *,
               controlnet: str | None = None, device: torch.device | str = "cpu", progress: bool = True) -> Tuned:
    """`higfa tune-classifier` as a function: fine-tune `classifier` (in place, float32) on the decoded x̂0
    of `data`'s images (ImageFolder, manifest or builtin:<split>, read at the model's size) under the diffusion
    `model` (a folder, single file or 'builtin'), with the prompts `higfa augment` would give them."""
    from ..schedule import Schedule
    from .guides import augment_preset
    from .labelled import read_labelled
    from .prompts import DEFAULT_PROMPT, check_prompt, fill_prompt, prompt_names

    recipe.check()
    schedule = Schedule.from_preset(recipe.preset)
    device = torch.device(device)
    comps, found, edges = load_tuning_model(model, controlnet, device)
    labelled = read_labelled(data, comps.default_size)
    y = labelled.targets(classifier.class_names)
    template = found[0] if found is not None else (recipe.prompt or DEFAULT_PROMPT)
    check_prompt(template)
    names = prompt_names(labelled.labels, set(labelled.labels), None, found[1] if found is not None else None)
    prompts = [fill_prompt(template, names[lab], recipe.super_name, lab) for lab in labelled.labels]
    if progress:
        print(f"x̂0 of {len(y)} images x {recipe.views} views at stage-2 noise (boundary {schedule.stage_boundary})",
              flush=True)
    views = x0_predictions(comps, labelled.images, prompts, boundary=schedule.stage_boundary, views=recipe.views,
                           seed=recipe.seed, cfg=schedule.cfg_lowconf, contour_strength=schedule.contour_lowconf,
                           negative=recipe.negative, edges=edges)
    steps = recipe.epochs * math.ceil((len(y) + len(views.source)) / recipe.batch_size)
    result = tune_classifier(classifier.to(device).float(), labelled.images, y, views.images, y[views.source],
                             steps=steps, batch_size=recipe.batch_size, lr=recipe.lr,
                             augment=augment_preset(recipe.augment), adversarial=recipe.adversarial, seed=recipe.seed,
                             progress=progress)
    return Tuned(result.classifier, steps, schedule.stage_boundary, len(y))


def load_tuning_model(model: str, controlnet: str | None, device: torch.device):
    """(components, (prompt template, {normalised class: prompt name}) or None, EdgeDetector)."""
    from ..backends.components import load_components
    from ..contour import EdgeDetector
    from .model_path import model_path, world_info
    from .prompts import model_prompts

    comps = load_components(model_path(model), controlnet=controlnet, need_controlnet=False).to(device)
    found = model_prompts(model)
    edges = EdgeDetector()
    if found is not None:  # a world folder: its own edge detector settings
        e = (world_info(model) or {})["edge_detector"]
        edges = EdgeDetector(e["method"], e["low"], e["high"], e["blur"])
    return comps, found, edges


# ---------------------------------------------------------------------------- CLI
def run(args: argparse.Namespace) -> int:
    from ..classifier import load_classifier, provenance, save_classifier
    from .distributed import Ranks, pick_device
    from .guides import check_out, evaluate_on, out_path, resolve_classifier, set_threads
    from .labelled import read_labelled

    recipe = TuneRecipe(args.preset, args.views, args.epochs, args.batch_size, args.lr, args.augment,
                        args.adversarial, args.seed, args.prompt, args.super, args.negative_prompt)
    recipe.check()
    out = out_path(args.out)
    src_path = resolve_classifier(args.name)
    if out.with_name(out.name + ".safetensors").resolve() == src_path.resolve():
        raise ValueError(f"--out {args.out} is the classifier being tuned: write the tuned one under a new name")
    check_out(out, args.overwrite)
    set_threads(args.threads)
    device = pick_device(args.device, Ranks())
    done = tune_guide(load_classifier(src_path, device), args.model, args.data, recipe, controlnet=args.controlnet,
                      device=device, progress=not args.no_progress)
    tuned = done.classifier
    ev = evaluate_on(tuned, read_labelled(args.val, tuned.input_size[0]), "--val") if args.val else None
    tuned.provenance = provenance(str(args.data), tuned.class_names, ev, command="tune-classifier",
                                  tuned_from=str(src_path), model=str(args.model), views=args.views,
                                  stage_boundary=done.stage_boundary, adversarial=args.adversarial,
                                  epochs=args.epochs, steps=done.steps, lr=args.lr, seed=args.seed,
                                  val_data=str(args.val) if args.val else None)
    path = save_classifier(tuned.cpu(), out)
    acc = "" if ev is None else f", val accuracy {ev['accuracy']:.4f}"
    print(f"wrote {path} (+ {path.with_suffix('.json').name}){acc}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("tune-classifier", help="fine-tune a classifier on the diffusion model's x̂0 of your images",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the classifier to tune: NAME.safetensors (+ .json)")
    p.add_argument("--data", required=True, help="your real labelled images (ImageFolder, manifest, builtin:<split>)")
    p.add_argument("--model", required=True, help="the diffusion model that will sample: diffusers folder, single "
                   "file, or 'builtin'")
    p.add_argument("--controlnet", help="ControlNet folder or file (default: MODEL/controlnet if present)")
    p.add_argument("--prompt", help=f"prompt template (default {DEFAULT_PROMPT_HELP}); the built-in world: its own")
    p.add_argument("--super", default="object", help="super-category for {super}")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--preset", default="higfa", help="schedule preset whose stage boundary, stage-2 cfg and contour "
                   "strength the x̂0 use (default higfa)")
    p.add_argument("--views", type=int, default=8, help="noised x̂0 views per image (default 8)")
    p.add_argument("--epochs", type=int, default=3, help="passes over clean + x̂0 images (default 3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW peak learning rate (default 3e-4: fine-tuning)")
    p.add_argument("--augment", default="robust", help="augmentation preset (default robust)")
    p.add_argument("--adversarial", type=float, default=0.0, help="PGD ε on the decoded image in [0,1] units "
                   "(e.g. 0.016 ≈ 4/255; 0: off)")
    p.add_argument("--val", help="labelled data to measure the tuned classifier on (into the sidecar)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="models/classifiers/NEW_NAME (never the classifier being tuned)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing NEW_NAME.safetensors (a NEW_NAME.json "
                   "that higfa did not write is never replaced)")
    p.add_argument("--threads", type=int, help="torch CPU threads (as `higfa augment`; default: torch's)")
    p.set_defaults(func=run)


DEFAULT_PROMPT_HELP = "'a photo of a {class}, a type of {super}'"
