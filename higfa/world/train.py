"""Train the built-in world's models from scratch on the CPU, reproducibly by seed.

    python -m higfa.world.train                 # everything, into higfa/world/assets/
    higfa train-world --stages vae diffusion    # some stages (later stages load earlier outputs)

Stages (see docs/world.md for formats and configs):
  vae        AutoencoderKL, 4x down-sampling (64 px image -> 8x16x16 latent), trained on 32 px crops
             (half centred on a marking), marking-weighted L1
  vae_decoder  the VAE's decoder fine-tuned with the encoder frozen (the latent space stays)
  diffusion  CLIPTextModel (word-level tokenizer) + UNet2DConditionModel + ControlNetModel, trained
             jointly on FAMILY prompts only, CFG dropout on text and contour, min-SNR weighting, EMA
  diffusion_more  the same three models trained further from the diffusion stage's EMA weights
             (a warm restart); both diffusion stages checkpoint and resume (out/checkpoints/)
  guidance   the few-shot guidance classifier: timm test_resnet on 10 real images per species
  oracle     the measuring classifier: timm resnet10t (slim), another seed, 200 images per species
  tiny_decoder  the guidance decoder: a TAESD-architecture AutoencoderTiny distilled from the VAE (tiny_decoder.py)

Each stage's settings, seconds and final losses go to `training.json` in the output folder.

Where the recipe lives: the shared config (`TrainConfig`) in train_common.py, the stages in the order `make
train-world` runs them in train_vae.py, train_diffusion.py, this file (the two classifiers, via the shared
`higfa.training.train_classifier`) and tiny_decoder.py; the architecture they build in architecture.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..classifier import build_classifier, provenance, save_classifier
from ..contour import EdgeDetector
from ..training import Augment, evaluate, train_classifier
from .architecture import COMFYUI_UNET_CONFIG, VAE_DOWNSAMPLE, with_latent_channels
from .birds import TinyBirds
from .catalog import assets, make_world
from .tiny_decoder import train_tiny_decoder
from .train_common import WORLD_DEFAULTS, StageCheckpoint, TrainConfig, for_world, log
from .train_diffusion import train_diffusion, train_diffusion_more
from .train_vae import train_vae, train_vae_decoder

STAGES = ("vae", "vae_decoder", "diffusion", "diffusion_more", "guidance", "oracle", "tiny_decoder")
# The order a world's stages run in (every stage after those it loads: vae_decoder, diffusion and tiny_decoder
# load the VAE, diffusion_more the diffusion stage's models, tiny_decoder all of them). finebirds trains its
# classifiers first, so the oracle can measure the VAE's ceiling, and ships no tiny decoder (its guidance decodes
# with the VAE: architecture.GUIDANCE_DEFAULT).
WORLD_STAGES = {"tinybirds": STAGES,
                "finebirds": ("oracle", "guidance", "vae", "vae_decoder", "diffusion", "diffusion_more")}


# Stages that start from the weights already in the folder (-> the stage that made those weights): running one
# again trains further, so its record keeps the earlier runs (the weights' history; the totals count them). Every
# other stage starts from scratch, and running it drops the records of the fine-tunes of the weights it replaced.
FINE_TUNE_STAGES = {"vae_decoder": "vae", "diffusion_more": "diffusion"}


def _record(out: Path, stage: str, info: dict[str, Any]) -> None:
    path = out / "training.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    stages = data.setdefault("stages", {})
    if stage in FINE_TUNE_STAGES and stage in stages:
        earlier = dict(stages[stage])
        info = {**info, "earlier_runs": [*earlier.pop("earlier_runs", []), earlier]}
    for tuned, base in FINE_TUNE_STAGES.items():
        if base == stage:
            stages.pop(tuned, None)  # those weights are gone
    stages[stage] = info
    data["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                       "processor": platform.processor() or platform.machine()}
    for key in ("stage_wall_seconds", "stage_cpu_seconds"):
        data["total_" + key[6:]] = round(sum(r.get(key, 0.0) for s in stages.values()
                                             for r in (s, *s.get("earlier_runs", ()))), 1)
    path.write_text(json.dumps(data, indent=1))





def _classifier_stage(cfg: TrainConfig, world: TinyBirds, out: Path, name: str) -> dict[str, Any]:
    """The guide or the oracle, trained by `higfa.training.train_classifier` exactly as
    `higfa train-classifier --data builtin:<split>:<n> --steps S --seed SEED ...` trains it (tests check
    that the two give the same weights), with its sidecar's provenance."""
    from ..training import predict

    guidance = name == "guidance"
    if guidance:
        split, per_class = "fewshot", cfg.guidance_shots
        arch, kwargs, steps, seed = cfg.guidance_arch, {}, cfg.guidance_steps, cfg.seed + 20
        augment = Augment(noise=0.03, blur=1.0)  # mild noise/blur: it also sees blurry x̂0 during guidance
    else:
        split, per_class = "train", cfg.oracle_per_class
        arch, kwargs, steps, seed = cfg.oracle_arch, dict(cfg.oracle_kwargs), cfg.oracle_steps, cfg.seed + 30
        augment = Augment(blur=cfg.oracle_blur)
    data = world.split(split, per_class)
    test = world.split("test", 50)
    source = "builtin" if world.name == "tinybirds" else world.name
    torch.manual_seed(seed)
    clf = build_classifier(arch, world.class_names, world.image_size, mean=(0.5,) * 3, std=(0.5,) * 3, **kwargs)
    ckpt = StageCheckpoint(out, name, cfg.checkpoint_every)
    result = train_classifier(clf, data.images, data.labels, steps=steps, seed=seed, augment=augment,
                              callback=lambda s, loss: log(f"{name} step {s}/{steps} loss {loss:.3f}")
                              if s % 100 == 0 else None, checkpoint=ckpt.path, checkpoint_every=ckpt.every)
    ckpt.finish()
    ev = evaluate(result.classifier, test.images, test.labels)
    fam = world.family_labels()
    pred = predict(result.classifier, test.images).argmax(1).numpy()
    result.classifier.provenance = provenance(
        f"{source}:{split}:{per_class}", world.class_names, ev,
        command=f"higfa train-world --world {world.name} --stages {name}", val_data=f"{source}:test",
        train_images=len(data), steps=steps, seed=seed)
    save_classifier(result.classifier.half(), out / name)
    info = {"seconds": round(result.seconds, 1), "steps": steps, "architecture": arch, "model_kwargs": kwargs,
            "train_images": len(data), "test_accuracy": round(ev["accuracy"], 4),
            "test_family_accuracy": round(float((fam[pred] == fam[test.labels]).mean()), 4)}
    log(f"{name} done in {result.seconds:.0f} s: {info}")
    return info


def run(cfg: TrainConfig, stages: list[str], out: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Run `stages` of world `cfg.world` in that world's order (WORLD_STAGES) into `out` (default: the world's
    shipped folder, catalog.assets). resume: skip the stages `out/training.json` records as done (a stage that was
    cut short left a checkpoint instead, and continues from it)."""
    known = WORLD_STAGES[cfg.world]
    unknown = sorted(set(stages) - set(known))
    if unknown:
        raise ValueError(f"unknown training stages {unknown} for world {cfg.world!r}: choose from {list(known)}")
    out = assets(cfg.world) if out is None else out
    torch.set_num_threads(max(1, cfg.threads))
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(cfg.world, seed=cfg.world_seed)
    fns = {"vae": train_vae, "vae_decoder": train_vae_decoder, "diffusion": train_diffusion,
           "diffusion_more": train_diffusion_more,
           "guidance": lambda c, w, o: _classifier_stage(c, w, o, "guidance"),
           "oracle": lambda c, w, o: _classifier_stage(c, w, o, "oracle"), "tiny_decoder": train_tiny_decoder}
    done = set(json.loads((out / "training.json").read_text()).get("stages", {})) if (
        resume and (out / "training.json").is_file()) else set()
    results = {}
    todo = [s for s in known if s in stages and s not in done]
    for stage in sorted(set(stages) & done, key=known.index):
        log(f"stage {stage}: done already (training.json), skipped")
    if todo:
        _write_world_json(cfg, world, out)  # first: a cut run's folder already says which world it holds
    for stage in todo:
        log(f"stage {stage}")
        wall, cpu = time.perf_counter(), time.process_time()
        info = fns[stage](cfg, world, out)
        # Wall time depends on who else uses the machine; CPU time of this process does not (much).
        info["stage_wall_seconds"] = round(time.perf_counter() - wall, 1)
        info["stage_cpu_seconds"] = round(time.process_time() - cpu, 1)
        info["threads"] = cfg.threads
        info["config"] = {k: v for k, v in asdict(cfg).items() if k.startswith(stage) or k in ("seed", "world_seed")}
        _record(out, stage, info)
        results[stage] = info
    return results


def _write_world_json(cfg: TrainConfig, world: TinyBirds, out: Path) -> None:
    det = EdgeDetector()
    info = {"format": 1, "world": {"name": world.name, "seed": cfg.world_seed, "image_size": world.image_size,
                                   "class_names": world.class_names, "families": world.family_names,
                                   "species_family": [s.family for s in world.species],
                                   "prompt_template": "a photo of a {family}"},
            "edge_detector": {"method": det.method, "low": det.low, "high": det.high, "blur": det.blur},
            "latent": {"channels": cfg.latent_channels, "downsample": VAE_DOWNSAMPLE,
                       "size": world.image_size // VAE_DOWNSAMPLE},
            "guidance_classifier": "guidance.safetensors", "oracle_classifier": "oracle.safetensors",
            "comfyui_unet_config": with_latent_channels(COMFYUI_UNET_CONFIG, cfg.latent_channels),
            "train_seed": cfg.seed}
    (out / "world.json").write_text(json.dumps(info, indent=1))


# ---------------------------------------------------------------------------- CLI
def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world", default="tinybirds", choices=sorted(WORLD_DEFAULTS),
                   help="which world to train (default: tinybirds, the demo's)")
    p.add_argument("--stages", nargs="+", default=None, choices=STAGES,
                   help="stages to run (default: all of the world's, in its order)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the world's shipped folder)")
    p.add_argument("--resume", action="store_true",
                   help="skip the stages training.json records as done; a cut stage continues from its checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=TrainConfig.threads, help="torch CPU threads")
    for f in ("vae_steps", "diffusion_steps", "guidance_steps", "oracle_steps"):
        p.add_argument("--" + f.replace("_", "-"), type=int, default=None, help="default: the world's")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="override any TrainConfig field, e.g. --set diffusion_per_class=50 vae_lr=1e-3")


def _config(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    changes: dict[str, Any] = dict(seed=args.seed, threads=args.threads)
    for f in ("vae_steps", "diffusion_steps", "guidance_steps", "oracle_steps"):
        if getattr(args, f) is not None:
            changes[f] = getattr(args, f)
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in fields or name == "world" or not value:
            raise ValueError(f"--set {item!r}: use FIELD=VALUE with FIELD one of {sorted(set(fields) - {'world'})}")
        default = getattr(TrainConfig(), name)
        changes[name] = json.loads(value) if isinstance(default, (dict, list)) else type(default)(value)
    return for_world(args.world, **changes)


def _run_args(args: argparse.Namespace) -> int:
    run(_config(args), args.stages or list(WORLD_STAGES[args.world]), args.out, resume=args.resume)
    return 0


def register(sub) -> None:
    p = sub.add_parser("train-world", help="train a built-in world's models (CPU, 2-3 h; resumable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=_run_args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m higfa.world.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return _run_args(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
