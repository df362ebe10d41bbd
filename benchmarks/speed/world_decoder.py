"""The built-in world's tiny guidance decoder vs its full VAE decoder on the classifier path.

    python -m benchmarks.speed.world_decoder [--per-species 8]

Same sources, contour seeds and noise seeds for both decoders (paired): `--per-species` few-shot images per
species, one image each (`--preset`, default `higfa`) (30 DDIM steps), guided by the world's few-shot classifier
(guidance.safetensors) with x̂0 decoded either by the world VAE or by the shipped tiny decoder
(higfa/world/assets/tiny_decoder, `make train-world`); the final image is always decoded by the VAE.
Fidelity: the oracle's (oracle.safetensors) species accuracy w.r.t. the intended species; fooling gap: the
guidance classifier's accuracy minus the oracle's on the same images. Stage-2 step time: the mean `seconds` of
the trace's stage-2 rows (whole step: model call + guidance). Writes outputs/bench/speed_world_decoder.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from higfa.contour import ContourTransform
from higfa.schedule import Schedule
from higfa.world.models import load_world

from ..seeds import CONTOUR, NOISE, bench_seed
from .parts import OUTPUTS, write_part


def run(models, sources, decoder: str, batch: int, preset: str = "higfa") -> dict:
    from higfa.training import fooling_gap, predict

    images, stage2, t0 = [], [], time.perf_counter()
    for b in range(0, len(sources), batch):
        idx = list(range(b, min(b + batch, len(sources))))
        tg = [int(sources.labels[i]) for i in idx]
        contours = models.contours(sources.images[idx], [bench_seed(0, CONTOUR, i, 0) for i in idx], ContourTransform())
        gen = models.generate(Schedule.from_preset(preset), tg, contours, [bench_seed(0, NOISE, i, 0) for i in idx],
                              guidance_decoder=decoder)
        images.append(gen.images)
        stage2 += [r.seconds for r in gen.result.trace.steps if r.stage == 2]
    images = np.concatenate(images)
    labels = np.asarray(sources.labels)
    oracle = predict(models.oracle, images).argmax(1).numpy()
    guidance = predict(models.guidance, images).argmax(1).numpy()
    gap = fooling_gap(guidance, oracle, labels)
    return {"oracle_species_accuracy": round(gap["independent_accuracy"], 4),
            "guidance_classifier_accuracy": round(gap["guided_accuracy"], 4),
            "fooling_gap": round(gap["fooling_gap"], 4), "stage2_step_seconds": round(float(np.mean(stage2)), 4),
            "seconds": round(time.perf_counter() - t0, 1), "images": len(images)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-species", type=int, default=8,
                   help="sources per species (default 8: 128 images; 64 moved by 0.05 between re-draws of the decoder)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--preset", default="higfa", help="schedule preset (default higfa)")
    p.add_argument("--out", type=Path, default=OUTPUTS / "speed_world_decoder.json")
    p.add_argument("--models", type=Path, default=None,
                   help="world models folder (default: the shipped ones), e.g. a candidate tiny decoder's")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = load_world() if args.models is None else load_world(args.models)
    if models.tiny_decoder is None:
        raise SystemExit(f"no tiny decoder in {models.path}: run `make train-world` (stage tiny_decoder)")
    sources = models.world.split("fewshot", args.per_species)
    result = {"per_species": args.per_species, "preset": args.preset, "steps": 30, "threads": args.threads,
              "models": str(args.models or "shipped")}
    for decoder in ("vae", "tiny"):
        result[decoder] = run(models, sources, decoder, args.batch, args.preset)
        print(decoder, result[decoder], flush=True)
    result["fidelity_drop"] = round(result["vae"]["oracle_species_accuracy"]
                                    - result["tiny"]["oracle_species_accuracy"], 4)
    result["within_0.03"] = result["fidelity_drop"] <= 0.03
    result["fooling_gap_not_worse"] = result["tiny"]["fooling_gap"] <= result["vae"]["fooling_gap"]
    result["decoder_parameters"] = {"vae": sum(p.numel() for p in models.vae.decoder.parameters()),
                                    "tiny": sum(p.numel() for p in models.tiny_decoder.decoder.parameters())}
    return write_part(args.out, result)


if __name__ == "__main__":
    raise SystemExit(main())
