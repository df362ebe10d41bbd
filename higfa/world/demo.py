"""`make demo` / `higfa demo`: HiGFA on the built-in tiny world, end to end, no arguments needed.

For each row (one species): a real source image of the species, its transformed contour, and one
sample per preset (`cfg`, `contour`, `higfa`, `higfa-robust`, `higfa-judged`) from the same noise, prompted
with the FAMILY text only and guided (the higfa presets) by the few-shot classifier; `higfa-judged` is the
paper's mechanism with a judge: the world's judge (a classifier that did not guide, the World Loader's `judge`)
gives the confidence that modulates cfg, contour and w_cls and gates the backward pass. An independent oracle
classifier says which species each sample shows. Writes to outputs/demo/:

    contact_sheet.png   source | transformed contour | cfg | contour | higfa | higfa-robust | higfa-judged, per row
    trace.png, trace.json   the higfa-judged trace of all rows, one batch (p_guide and p_judge per sample and
                        their mean, the fooling gap between them, cfg / contour / w_cls following p_judge, steps
                        where the gate skipped a sample's backward pass ×, the first row's gradient maps)
    metrics.json        per preset: oracle accuracy, confidences, gated steps, time; per row: predictions
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from ..classifier import find_name
from ..contour import ContourTransform
from ..schedule import Schedule
from .models import JUDGE_FILE

PRESETS = ("cfg", "contour", "higfa", "higfa-robust", "higfa-judged")
TRACED = "higfa-judged"  # the preset whose batch (every row) is drawn in trace.png
JUDGED = ("higfa-judged",)  # the presets sampled with the world's judge
# Two species per family, chosen so every marking kind appears.
DEFAULT_SPECIES = ("red-crowned finch", "orange-billed finch", "spectacled warbler", "white-winged warbler",
                   "spectacled jay", "plain jay", "red-crowned dove", "orange-billed dove")


def idle_cores() -> int:
    """torch's default thread count, less the cores other processes keep busy (1-minute load average), at least
    1. Why: torch's threads wait for each other at every op, so a thread that shares its core with another
    process stalls all of them: `make demo` took 150+ s with two 1-thread trainings on this 2-core machine at
    torch's default of 2 threads, 39 s at 1 thread (17 s on idle cores)."""
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - busy))


def run_demo(out: Path = Path("outputs/demo"), species: Sequence[str] = DEFAULT_SPECIES, steps: int = 30,
             seed: int = 0, threads: int | None = None, progress: bool = True, models_path: Path | None = None) -> dict:
    """Writes out/{contact_sheet.png, trace.png, trace.json, metrics.json}; returns the metrics. `threads`: torch
    CPU threads while it runs (default `idle_cores()`; the caller's setting is restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or idle_cores())
    try:
        return _demo(out, species, steps, seed, progress, models_path)
    finally:
        torch.set_num_threads(before)


def _demo(out: Path, species: Sequence[str], steps: int, seed: int, progress: bool, models_path: Path | None) -> dict:
    from tqdm import tqdm

    from .models import load_world

    started = time.perf_counter()
    models = load_world() if models_path is None else load_world(models_path)
    world = models.world
    targets = [_species_index(world.class_names, s) for s in species]
    few = world.split("fewshot", 1)  # the first real image of each species is the source
    sources = np.stack([few.images[few.of_class(t)[0]] for t in targets])
    rows = len(targets)
    contour_seeds = [seed * 1000 + r for r in range(rows)]
    noise_seeds = [seed * 1000 + 500 + r for r in range(rows)]
    contours = models.contours(sources, contour_seeds, ContourTransform())
    out.mkdir(parents=True, exist_ok=True)

    images: dict[str, list[np.ndarray]] = {}
    traces: dict[str, list] = {}
    seconds = dict.fromkeys(PRESETS, 0.0)
    bar = tqdm(total=len(PRESETS) * steps, desc="demo", unit="step", disable=not progress, file=sys.stdout,
               dynamic_ncols=True)
    # All rows of a preset form one batch; w_cls and gating are per sample, the text and contour
    # strengths of a step follow the batch's mean confidence (docs/method.md, "Batches").
    # The traced preset records where the classifier's gradient acts (trace.png draws the maps as a strip);
    # recording changes no pixel of the samples.
    schedules = {p: Schedule.from_preset(p, grad_map=p == TRACED) for p in PRESETS}
    judge = _world_judge(models)
    for preset in PRESETS:
        bar.set_postfix_str(preset)
        t0 = time.perf_counter()
        gen = _generate(models, schedules[preset], targets, contours, noise_seeds, steps,
                        judge if preset in JUDGED else None, callback=lambda *_: bar.update(1))
        seconds[preset] = time.perf_counter() - t0
        images[preset] = list(gen.images)
        traces[preset] = gen.result.trace.split(rows)
        if preset == TRACED:
            batch_trace = gen.result.trace
    bar.close()

    metrics = _metrics(models, targets, images, traces, seconds, sources, judge)
    metrics["settings"] = {"steps": steps, "sampler": "DDIM (eta 0), core reference sampler", "seed": seed,
                           "contour_seeds": contour_seeds, "noise_seeds": noise_seeds,
                           "contour_transform": ContourTransform().to_dict(),
                           "schedules": {p: schedules[p].to_dict() for p in PRESETS},
                           "models": str(models.path), "judge": JUDGE_FILE, "judged_presets": list(JUDGED),
                           "threads": torch.get_num_threads()}
    sheet = _contact_sheet(world.class_names, targets, sources, contours, images, metrics["rows"])
    cv2.imwrite(str(out / "contact_sheet.png"), sheet[:, :, ::-1])
    # the whole batch: how the judge's p moves the ramp differs per sample (thin lines), the mean is thick
    batch_trace.plot(out / "trace.png", title=f"{TRACED} trace of the {rows} rows (judge "
                                              f"{JUDGE_FILE.removesuffix('.safetensors')}; thick: batch mean)")
    batch_trace.save(out / "trace.json")
    metrics["traced"] = {"preset": TRACED, "rows": rows, **trace_story(batch_trace)}
    metrics["seconds_total"] = round(time.perf_counter() - started, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(format_table(metrics))
    print(format_story(metrics["traced"]))
    print(f"wrote {out}/contact_sheet.png, trace.png, trace.json, metrics.json "
          f"in {metrics['seconds_total']:.0f} s")
    return metrics


def _species_index(names: list[str], name: str) -> int:
    found = find_name(name, names)  # the one class-name matcher (case, '_', '-' and spacing insensitive)
    if found is None:
        raise ValueError(f"unknown species {name!r}: the built-in world has {names}")
    return found


def _world_judge(models):
    """The world folder's judge (JUDGE_FILE), float32; a world without one is an error naming the file."""
    from ..classifier import load_classifier

    file = models.path / JUDGE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: the demo's higfa-judged column needs the world's judge "
                                "(shipped with the built-in world; `higfa tune-classifier --adversarial` makes it)")
    return load_classifier(file).float()


def _generate(models, schedule, targets, contours, seeds, steps, judge=None, callback=None):
    """`models.generate`, with `judge` (a Classifier or None) giving the confidence (Guide(judge=...))."""
    if judge is None:
        return models.generate(schedule, targets, contours, seeds, steps, callback=callback)
    from ..backends.denoiser import decode_uint8
    from ..guide import Guide
    from ..judge import map_targets
    from ..sampler import sample
    from .models import Generation

    names = models.world.class_names
    den = models.denoiser([models.world.prompt(t) for t in targets], contours)
    guide_decode, dname = models.guidance_decode()
    guide = Guide(schedule, classifier=models.guidance, decode=guide_decode, target=list(targets),
                  class_names=names, decoder_name=dname, judge=judge,
                  judge_target=map_targets(targets, names, judge.class_names),
                  judge_name=JUDGE_FILE.removesuffix(".safetensors"))
    result = sample(den, models.noise(seeds), models.noise_schedule.sample_sigmas(steps, "ddim"), guide,
                    callback=callback)
    return Generation(decode_uint8(models.decode(), result.latent), result)


def trace_story(trace) -> dict:
    """What a (batch) trace's stage 2 did, as batch means: p_guide and p_judge at the first and last step both
    were measured, w_cls at the first and last stage-2 step, and the stage-2 sample-steps the gate skipped (no
    backward pass for that sample)."""
    s2 = [r for r in trace.steps if r.stage == 2]
    both = [r for r in s2 if r.confidence is not None and r.judge_confidence is not None]

    def mean(values):
        return None if values is None else round(float(np.mean(values)), 3)

    return {"stage2_sample_steps": sum(len(r.gated) for r in s2),
            "gated_sample_steps": sum(sum(bool(g) for g in r.gated) for r in s2),
            "w_cls_first": mean(s2[0].classifier_scale) if s2 else None,
            "w_cls_last": mean(s2[-1].classifier_scale) if s2 else None,
            "p_guide_first": mean(both[0].confidence) if both else None,
            "p_guide_last": mean(both[-1].confidence) if both else None,
            "p_judge_first": mean(both[0].judge_confidence) if both else None,
            "p_judge_last": mean(both[-1].judge_confidence) if both else None}


def format_story(story: dict) -> str:
    """One printed line: what trace.png shows."""
    def f(v):
        return "–" if v is None else f"{v:.2f}"

    return (f"{story['preset']} trace.png ({story['rows']} rows, stage-2 means): p_judge {f(story['p_judge_first'])}"
            f" -> {f(story['p_judge_last'])} drives the ramp (p_guide {f(story['p_guide_first'])} -> "
            f"{f(story['p_guide_last'])}); w_cls {f(story['w_cls_first'])} -> {f(story['w_cls_last'])}; gated "
            f"{story['gated_sample_steps']} of {story['stage2_sample_steps']} stage-2 sample-steps")


def _metrics(models, targets, images, traces, seconds, sources, judge=None) -> dict:
    """Per preset: fidelity by the world's oracle (it never guides the demo's images; the shared
    implementation of higfa/world/metrics.py), the guide's own view (and the judge's, for the judged
    presets), time and guidance counts."""
    from ..training import predict
    from .metrics import fidelity

    world = models.world
    fam = world.family_labels()
    tgt = np.array(targets)
    out: dict = {"scored_by": "world oracle (higfa/world/assets/oracle.safetensors)", "presets": {}, "rows": []}
    src_pred = fidelity(models.oracle, sources, tgt, fam, "world oracle")["pred"]
    preds = {}
    for preset in PRESETS:
        # the guidance classifier's own view of the final images (it is what higfa optimises)
        f = fidelity(models.oracle, np.stack(images[preset]), tgt, fam, "world oracle", guide=models.guidance)
        preds[preset] = (f["pred"], f["p_target_each"])
        guide_p = [t.final_confidence()[0] if t.final_confidence() else None for t in traces[preset]]
        out["presets"][preset] = {
            "oracle_accuracy": f["species"],
            "oracle_family_accuracy": f["family"],
            "oracle_p_target": f["p_target"],
            "guidance_p_target": f["guide_p_target"],
            "seconds_per_sample": round(seconds[preset] / len(tgt), 2),
            "guided_sample_steps": int(sum(t.summary()["guided_sample_steps"] for t in traces[preset])),
            "gated_sample_steps": int(sum(t.summary()["gated_sample_steps"] for t in traces[preset])),
            "stage2_sample_steps": int(sum(t.summary()["stage2_evaluations"] for t in traces[preset])),
            "last_measured_confidence": guide_p,
        }
        if preset in JUDGED and judge is not None:
            pj = predict(judge, np.stack(images[preset]))[np.arange(len(tgt)), tgt]
            out["presets"][preset]["judge_p_target"] = round(float(pj.mean()), 4)
            out["presets"][preset]["last_measured_judge_confidence"] = [
                t.final_judge_confidence()[0] if t.final_judge_confidence() else None for t in traces[preset]]
    for r, t in enumerate(targets):
        out["rows"].append({"target": world.class_names[t], "source_oracle": world.class_names[int(src_pred[r])],
                            **{p: {"oracle": world.class_names[int(preds[p][0][r])],
                                   "oracle_p_target": round(float(preds[p][1][r]), 3)} for p in PRESETS}})
    return out


def format_table(metrics: dict) -> str:
    """The printed table: per preset the oracle's verdict, the guide's (and the judge's) p(target) on the final
    images, the stage-2 sample-steps the gate skipped (of all stage-2 sample-steps), and the time."""
    head = (f"{'preset':<12} {'oracle acc':>10} {'family acc':>10} {'p_oracle(y)':>11} {'p_guide(y)':>10} "
            f"{'p_judge(y)':>10} {'gated':>9} {'s/sample':>8}")
    lines = [head, "-" * len(head)]
    for p, m in metrics["presets"].items():
        pj = f"{m['judge_p_target']:.2f}" if "judge_p_target" in m else "–"
        gated = f"{m['gated_sample_steps']}/{m['stage2_sample_steps']}" if m["guided_sample_steps"] else "–"
        lines.append(f"{p:<12} {m['oracle_accuracy']:>10.2f} {m['oracle_family_accuracy']:>10.2f} "
                     f"{m['oracle_p_target']:>11.2f} {m['guidance_p_target']:>10.2f} {pj:>10} {gated:>9} "
                     f"{m['seconds_per_sample']:>8.2f}")
    return "\n".join(lines)


def _contact_sheet(names, targets, sources, contours, images, rows, cell: int = 128) -> np.ndarray:
    """source | contour | one column per preset, per row; each generated cell is framed green when the
    oracle recognises the target species, red otherwise, with the oracle's answer underneath."""
    label_w, head_h, text_h, pad = 170, 22, 14, 4
    cols = 2 + len(PRESETS)
    W = label_w + cols * (cell + pad) + pad
    H = head_h + len(targets) * (cell + text_h + pad) + pad
    sheet = np.full((H, W, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for c, title in enumerate(["source (real)", "transformed contour", *PRESETS]):
        cv2.putText(sheet, title, (label_w + c * (cell + pad) + pad, head_h - 7), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    contour_imgs = (contours.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for r, t in enumerate(targets):
        y = head_h + r * (cell + text_h + pad)
        cv2.putText(sheet, names[t], (4, y + cell // 2), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        cells = [sources[r], contour_imgs[r], *[images[p][r] for p in PRESETS]]
        for c, img in enumerate(cells):
            x = label_w + c * (cell + pad) + pad
            sheet[y:y + cell, x:x + cell] = cv2.resize(img, (cell, cell), interpolation=cv2.INTER_NEAREST)
            if c >= 2:
                p = PRESETS[c - 2]
                said = rows[r][p]["oracle"]
                color = (0, 160, 0) if said == names[t] else (210, 0, 0)
                cv2.rectangle(sheet, (x - 2, y - 2), (x + cell + 1, y + cell + 1), color, 2)
                cv2.putText(sheet, said, (x, y + cell + 11), font, 0.3, color, 1, cv2.LINE_AA)
    return sheet


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    p.add_argument("--species", nargs="+", default=list(DEFAULT_SPECIES), help="one row per species name")
    p.add_argument("--steps", type=int, default=30, help="sampling steps (default 30, SaSPA's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, less the cores other processes keep busy)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--models", type=Path, default=None, help="world models folder (default: the shipped ones)")


def _run(args: argparse.Namespace) -> int:
    run_demo(args.out, args.species, args.steps, args.seed, args.threads, not args.no_progress, args.models)
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="run HiGFA on the built-in tiny world (outputs/demo/)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m higfa.world.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return _run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
