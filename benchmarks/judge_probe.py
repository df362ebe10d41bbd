"""A quick probe of the judge (issue 25) on a shipped world: not the acceptance bench, no downstream.

    OMP_NUM_THREADS=1 python -m benchmarks.judge_probe [--world tinybirds|finebirds] [--per-species 8] [--arms NAME,...]

Every arm generates the same few-shot sources with the same contour and noise seeds (`benchmarks.seeds`, paired
across arms), 30 DDIM steps, x̂0 decoded by the world VAE on the classifier path (as the quality bench), and differs
only in its schedule preset (+ overrides), its guide and its judge (`Guide(judge=...)`: the judge's p drives the
ramp, the gate and measure_every; the gradient stays the guide's). The two shipped guides pair up: `guidance` (the
few-shot guide) and `guidance_robust` (its copy tuned by `higfa tune-classifier --adversarial`); and independent
judges (TRAINED) made by `higfa train-classifier` on the same 160 few-shot images with another architecture or
seed (trained into .cache/judge_probe/ when missing). Per arm:

- world-oracle species and family accuracy of the final images (the oracle guided none of them);
- the guide's and the judge's verdicts (species accuracy on the final images) and their fooling gaps (verdict −
  oracle), and inside sampling the final p_guide, p_judge and their gap (`Trace.fooling_gap`);
- of the stage-2 sample-steps: the share the gate skipped (gated), the share without a backward pass (gated, or
  w_cls faded to 0), the mean w_cls; of the stage-2 batch steps: the share with no backward pass at all (the compute
  the gate and the fade save, batch of --batch);
- the guided (stage-2) step time, whole step (model call + guidance), and seconds per image;
- with a judge, what the judge's filter at p ≥ 0.5 on the final image keeps and the oracle's accuracy on it.

Writes benchmarks/results/judge_probe.json (tinybirds; another world: judge_probe_<world>.json) after every arm
(a rerun skips arms already there with the same settings and preset values); docs/quality.md "Judge probe" reads it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from higfa.world.catalog import DEFAULT

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "judge_probe.json"
SHIPPED = ("guidance", "guidance_robust")  # the world's two classifiers (guidance_robust: the guide PGD-tuned)
# Independent judges (issue 25 item 2): trained on the guide's own 160 few-shot images by the pack's one command, as
# the world's guide was trained (`guidance`: test_resnet, seed 20, the same options; tests/test_classifier_commands
# checks that command reproduces the world stage), with another architecture or another seed. No label the guide did
# not have. The probe trains a missing one into trained_dir(world) (about 3 CPU-minutes each).
TRAINED_DIR = ROOT / ".cache" / "judge_probe"
DEFAULT_WORLD = DEFAULT  # the demo's world: its probe file, judges and batches keep their recorded places
TRAINED = {"fewshot_resnet_seed21": ("--architecture", "test_resnet", "--seed", "21"),  # the guide's, another seed
           "fewshot_convnext": ("--architecture", "test_convnext", "--seed", "20"),  # another architecture
           "fewshot_efficientnet": ("--architecture", "test_efficientnet", "--seed", "20"),  # another architecture
           # the quality bench's stronger downstream network: a ResNet-18 started from weights pretrained on the
           # world's species outside its test classes (benchmarks.quality.protocol, the way users start from
           # ImageNet), fine-tuned on the same few-shot images at the protocol's fine-tuning rate
           "fewshot_resnet18_pre": ("--architecture", "resnet18", "--seed", "20", "--lr", "1e-3",
                                    "--init", "PRETRAINED"),
           # the same start as a linear probe: only the final layer learns, on the pretrained (frozen) features
           "fewshot_resnet18_probe": ("--architecture", "resnet18", "--seed", "20", "--lr", "3e-2",
                                      "--init", "PRETRAINED", "--head-only")}
# several guides as one (higfa.classifier.ClassifierEnsemble: the mean of their log-softmax); a push that one
# network's adversarial directions make and the others' do not averages out (the probe's question: does it?)
ENSEMBLES = {"ensemble3": ("fewshot_resnet18_pre", "fewshot_efficientnet", "guidance"),
             "ensemble5": ("fewshot_resnet18_pre", "fewshot_efficientnet", "guidance", "fewshot_convnext",
                           "fewshot_resnet_seed21"),
             # a judge for ensemble3's images: the two few-shot classifiers it does not hold
             "ensemble-others": ("fewshot_convnext", "fewshot_resnet_seed21"),
             # ensemble3 with the seed-21 test_resnet in place of the ResNet-18, so that the strongest few-shot
             # classifier (the pretrained ResNet-18) is free to judge
             "ensemble3b": ("guidance", "fewshot_efficientnet", "fewshot_resnet_seed21")}
PRETRAINED_CACHE = ROOT / "outputs" / "bench_quality"  # where the quality bench keeps its pretrained weights
GUIDES = SHIPPED + tuple(TRAINED) + tuple(ENSEMBLES)


def trained_dir(world: str = DEFAULT_WORLD) -> Path:
    """Where the independent judges of `world` (and its arms' batches) are kept: TRAINED_DIR for the default world,
    TRAINED_DIR/<world> for another."""
    return TRAINED_DIR if world == DEFAULT_WORLD else TRAINED_DIR / world


def train_options(world: str = DEFAULT_WORLD) -> tuple[str, ...]:
    """The world guide's recipe (its `guidance` stage: shots, steps) as `higfa train-classifier` options, on the
    world's few-shot images, validated on its test split."""
    from higfa.world.train_common import for_world

    cfg = for_world(world)
    data = "builtin" if world == DEFAULT_WORLD else world
    return ("--data", f"{data}:fewshot:{cfg.guidance_shots}", "--val", f"{data}:test", "--input-size", "64",
            "--mean", ".5", ".5", ".5", "--std", ".5", ".5", ".5", "--augment", "robust",
            "--steps", str(cfg.guidance_steps))


def train_command(name: str, folder: Path | None = None, world: str = DEFAULT_WORLD) -> list[str]:
    """The `higfa train-classifier` arguments that make the independent judge `name` (TRAINED) of `world` in
    `folder` (default `trained_dir(world)`)."""
    folder = trained_dir(world) if folder is None else folder
    extra = [pretrained_weights(world, make=False).as_posix() if x == "PRETRAINED" else x for x in TRAINED[name]]
    return ["train-classifier", *train_options(world), *extra, "--threads", "1", "--no-progress",
            "--out", str(folder / name)]


def pretrained_weights(world: str, make: bool = True) -> Path:
    """The quality bench's resnet18-pre start for `world` (protocol.pretrained_file: pretrained on the world's
    disjoint species, cached in PRETRAINED_CACHE): trained first when `make` and missing; else only its path."""
    from higfa.world.catalog import make_world

    from .quality import protocol

    from .quality import device as on

    # on a GPU machine (the quality bench's probe:NAME classifiers there) pretrained on the GPU, under its own key;
    # on a CPU the weights and key as before
    arch, w, dev = protocol.architecture("resnet18-pre"), make_world(world), on.resolve("auto")
    if make:
        return protocol.pretrained_file(arch, w, PRETRAINED_CACHE, device=dev)
    return protocol.pretrained_path(arch, w, PRETRAINED_CACHE, device=dev)


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    preset: str
    guide: str  # a shipped classifier: guidance | guidance_robust
    judge: str | None = None  # the other one, or None
    overrides: tuple = ()  # ((field, value), ...)

    def settings(self) -> dict:
        return {"preset": self.preset, "guide": self.guide, "judge": self.judge, "overrides": dict(self.overrides)}


ARMS = [
    Arm("higfa", "higfa", "guidance"),
    Arm("higfa+judge=robust", "higfa", "guidance", "guidance_robust"),
    Arm("higfa/robust-guide+judge=fewshot", "higfa", "guidance_robust", "guidance"),
    Arm("higfa-robust", "higfa-robust", "guidance"),
    Arm("higfa-robust/robust-guide", "higfa-robust", "guidance_robust"),
    # these ran before higfa-judged's tau_skip became 0.8 (chosen from the skip0.8 arm): 0.95 said explicitly
    Arm("higfa-judged/robust-guide+judge=fewshot", "higfa-judged", "guidance_robust", "guidance",
        (("tau_skip", 0.95),)),
    Arm("higfa-judged+judge=robust", "higfa-judged", "guidance", "guidance_robust", (("tau_skip", 0.95),)),
    # the ramp for a judge, on the pairing the World Loader offers (the few-shot guide judged by guidance_robust)
    Arm("higfa-judged+judge=robust,lo0.5", "higfa-judged", "guidance", "guidance_robust",
        (("tau_lo", 0.5), ("tau_hi", 0.95), ("tau_skip", 0.97))),
    Arm("higfa-judged+judge=robust,skip0.8", "higfa-judged", "guidance", "guidance_robust", (("tau_skip", 0.8),)),
    Arm("higfa-judged+judge=robust,w6", "higfa-judged", "guidance", "guidance_robust",
        (("classifier_scale", 6.0), ("tau_skip", 0.95))),
    # independent judges (TRAINED): the few-shot guide judged by a classifier trained on the same 160 images with
    # the guide's architecture and another seed, or another architecture; and the tuned guide judged by the former
    Arm("higfa-judged+judge=seed21", "higfa-judged", "guidance", "fewshot_resnet_seed21"),
    Arm("higfa+judge=seed21", "higfa", "guidance", "fewshot_resnet_seed21"),
    Arm("higfa-judged+judge=efficientnet", "higfa-judged", "guidance", "fewshot_efficientnet"),
    Arm("higfa-judged+judge=convnext", "higfa-judged", "guidance", "fewshot_convnext"),
    Arm("higfa+judge=efficientnet", "higfa", "guidance", "fewshot_efficientnet"),
    Arm("higfa-judged/robust-guide+judge=seed21", "higfa-judged", "guidance_robust", "fewshot_resnet_seed21"),
    Arm("higfa+judge=convnext", "higfa", "guidance", "fewshot_convnext"),
    Arm("higfa-judged+judge=resnet18-pre", "higfa-judged", "guidance", "fewshot_resnet18_pre"),
    # the stronger few-shot classifier as the guide (finebirds: its guide is the bottleneck, not its judge)
    Arm("higfa-robust/resnet18-pre-guide", "higfa-robust", "fewshot_resnet18_pre"),
    Arm("higfa-tuned/resnet18-pre-guide", "higfa-tuned", "fewshot_resnet18_pre"),  # half the push (w_cls 2)
    Arm("higfa-robust/resnet18-pre-guide/views16", "higfa-robust", "fewshot_resnet18_pre", None, (("views", 16),)),
    # the pretrained features frozen (a linear probe) as the guide: its push goes through features learnt from
    # many images of other species, where the markings sit
    Arm("higfa-robust/resnet18-probe-guide", "higfa-robust", "fewshot_resnet18_probe"),
    # where and how hard the resnet18-pre guide pushes: twice the push, guided over the last 60 % of the steps,
    # the gradient through the denoiser (x_t -> x̂0 -> image, not x̂0 alone)
    Arm("higfa-robust/resnet18-pre-guide/w8", "higfa-robust", "fewshot_resnet18_pre", None,
        (("classifier_scale", 8.0),)),
    Arm("higfa-robust/resnet18-pre-guide/boundary0.4", "higfa-robust", "fewshot_resnet18_pre", None,
        (("stage_boundary", 0.4),)),
    Arm("higfa-robust/resnet18-pre-guide/through-denoiser", "higfa-robust", "fewshot_resnet18_pre", None,
        (("grad_through_denoiser", True),)),
    Arm("higfa-robust/ensemble3-guide", "higfa-robust", "ensemble3"),
    Arm("higfa-robust/ensemble3-guide/through-denoiser", "higfa-robust", "ensemble3", None,
        (("grad_through_denoiser", True),)),
    Arm("higfa-robust/ensemble5-guide", "higfa-robust", "ensemble5"),
    # the paper's mechanism on the ensemble: its own confidence, or a judge of classifiers that did not guide
    Arm("higfa/ensemble3-guide", "higfa", "ensemble3"),
    Arm("higfa-judged/ensemble3-guide+judge=ensemble-others", "higfa-judged", "ensemble3", "ensemble-others"),
    # the mechanism with a judge that is itself strong: ensemble3 judged by one classifier it does not hold, and an
    # ensemble without the ResNet-18 judged by it (with its unmodulated control: same guide, same images' seeds)
    Arm("higfa-judged/ensemble3-guide+judge=seed21", "higfa-judged", "ensemble3", "fewshot_resnet_seed21"),
    Arm("higfa-robust/ensemble3b-guide", "higfa-robust", "ensemble3b"),
    Arm("higfa-judged/ensemble3b-guide+judge=resnet18-pre", "higfa-judged", "ensemble3b", "fewshot_resnet18_pre"),
]


def load_classifier_named(models, name: str):
    """A shipped classifier from the world folder, or an independent judge of TRAINED (trained first if missing)."""
    from higfa.classifier import load_classifier

    if name not in GUIDES:
        raise ValueError(f"guide/judge {name!r}: choose one of {GUIDES}")
    if name == "guidance":
        return models.guidance
    if name in ENSEMBLES:
        from higfa.classifier import ClassifierEnsemble

        return ClassifierEnsemble([load_classifier_named(models, m) for m in ENSEMBLES[name]])
    if name in SHIPPED:
        file = models.path / f"{name}.safetensors"
        if not file.is_file():
            raise SystemExit(f"{file} is missing: the world {models.world.name!r} ships no {name}; choose arms "
                             "without it")
        return load_classifier(file).float()
    return load_classifier(trained_file(name, models.world.name)).float()


def trained_file(name: str, world: str = DEFAULT_WORLD) -> Path:
    """The file of the independent classifier `name` (TRAINED) of `world`: trained_dir(world)/<name>.safetensors,
    made first by `higfa train-classifier` (train_command) when missing. The quality bench's `probe:NAME` too."""
    if name not in TRAINED:
        raise ValueError(f"{name!r} is not one of the judge probe's trained classifiers {sorted(TRAINED)}")
    path = trained_dir(world) / f"{name}.safetensors"
    if not path.is_file():
        from higfa.jobs.cli import main as higfa

        if "PRETRAINED" in TRAINED[name]:
            pretrained_weights(world)  # the start it names, pretrained when missing
        command = train_command(name, world=world)
        print("training judge:", "higfa", " ".join(command), flush=True)
        if higfa(command) != 0:
            raise RuntimeError(f"`higfa {' '.join(command)}` failed (its message is above)")
    return path


def judge_provenance(name: str | None, world: str = DEFAULT_WORLD) -> dict | None:
    """What an independent judge is (its sidecar's command, seed and held-out accuracy); None for the others."""
    if name not in TRAINED:
        return None
    folder = trained_dir(world)
    sidecar = json.loads((folder / f"{name}.json").read_text())
    prov = sidecar.get("provenance", {})
    return {"command": "higfa " + " ".join(train_command(name, folder.relative_to(ROOT), world)),
            "architecture": sidecar["architecture"], "seed": prov.get("seed"),
            "train_images": prov.get("train_images"), "test_accuracy": prov.get("val_accuracy"),
            "test_images": prov.get("val_images")}


def trained_used(arm: Arm) -> list[str]:
    """The classifiers of TRAINED that `arm` guides or judges with (an ensemble's members included), in order."""
    names = []
    for n in (arm.guide, arm.judge):
        for m in ENSEMBLES.get(n, (n,)):
            if m in TRAINED and m not in names:
                names.append(m)
    return names


def generate(models, schedule, guide_clf, judge_clf, judge_name, targets, contours, seeds, steps: int = 30):
    """One batch: final images [B,H,W,3] uint8 and the sampler result (trace with the judge's p)."""
    from higfa.backends.denoiser import decode_uint8
    from higfa.guide import Guide
    from higfa.judge import map_targets
    from higfa.sampler import sample

    names = models.world.class_names
    den = models.denoiser([models.world.prompt(t) for t in targets], contours)
    decode, dname = models.guidance_decode("vae")
    judge_kw = {}
    if judge_clf is not None:
        judge_kw = dict(judge=judge_clf, judge_target=map_targets(targets, names, judge_clf.class_names),
                        judge_name=judge_name)
    guide = Guide(schedule, classifier=guide_clf, decode=decode, target=list(targets), class_names=names,
                  decoder_name=dname, **judge_kw)
    result = sample(den, models.noise(seeds), models.noise_schedule.sample_sigmas(steps, "ddim"), guide)
    return decode_uint8(models.decode(), result.latent), result


def trace_stats(traces) -> dict:
    """Stage-2 counts over the batches' traces: sample-steps gated / without backward, batch steps without
    backward, mean w_cls, step time, final p_guide / p_judge."""
    s2 = [r for t in traces for r in t.steps if r.stage == 2]
    sample_steps = sum(len(r.gated) for r in s2)
    gated = sum(sum(bool(g) for g in r.gated) for r in s2)
    no_backward = sum(sum(w <= 0 for w in r.classifier_scale) for r in s2)
    batch_skip = sum(all(w <= 0 for w in r.classifier_scale) for r in s2)
    p_guide = [p for t in traces for p in (t.final_confidence() or [])]
    p_judge = [p for t in traces for p in (t.final_judge_confidence() or [])]
    w = [x for r in s2 for x in r.classifier_scale]
    return {"stage2_sample_steps": sample_steps, "gated_sample_steps": gated,
            "gated_fraction": round(gated / max(sample_steps, 1), 4),
            "no_backward_fraction": round(no_backward / max(sample_steps, 1), 4),
            "batch_steps_without_backward_fraction": round(batch_skip / max(len(s2), 1), 4),
            "mean_stage2_w_cls": round(float(np.mean(w)), 4) if w else None,
            "guided_step_seconds": round(float(np.mean([r.seconds for r in s2])), 4) if s2 else None,
            "final_p_guide": round(float(np.mean(p_guide)), 4) if p_guide else None,
            "final_p_judge": round(float(np.mean(p_judge)), 4) if p_judge else None,
            "sampling_fooling_gap": (round(float(np.mean(p_guide) - np.mean(p_judge)), 4) if p_judge else None)}


def verdicts(models, images: np.ndarray, labels: np.ndarray, guide_clf, judge_clf) -> dict:
    """World-oracle species / family accuracy, the guide's and judge's verdicts, the judge's filter at 0.5."""
    from higfa.training import predict

    fam = models.world.family_labels()
    o = predict(models.oracle, images).argmax(1).numpy()
    right = o == labels
    out = {"oracle_species": round(float(right.mean()), 4),
           "oracle_family": round(float((fam[o] == fam[labels]).mean()), 4)}
    g = predict(guide_clf, images).argmax(1).numpy()
    out["guide_species"] = round(float((g == labels).mean()), 4)
    out["guide_fooling_gap"] = round(out["guide_species"] - out["oracle_species"], 4)
    if judge_clf is not None:
        pj = predict(judge_clf, images)
        out["judge_species"] = round(float((pj.argmax(1).numpy() == labels).mean()), 4)
        out["judge_fooling_gap"] = round(out["judge_species"] - out["oracle_species"], 4)
        kept = pj[torch.arange(len(labels)), torch.as_tensor(labels)].numpy() >= 0.5
        out["judge_filter_0.5"] = {"kept": round(float(kept.mean()), 4),
                                   "oracle_species_kept": round(float(right[kept].mean()), 4) if kept.any() else None,
                                   "oracle_species_dropped": (round(float(right[~kept].mean()), 4)
                                                              if (~kept).any() else None)}
    return out


def batch_dir(arm: Arm, schedule_dict: dict, head: dict) -> Path:
    """Where an arm's finished batches wait (images + trace per batch), keyed by everything that makes them."""
    import hashlib

    key = json.dumps({"arm": arm.settings(), "schedule": schedule_dict, "head": head}, sort_keys=True)
    name = f"{arm.name.replace('/', '_')}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return trained_dir(head.get("world", DEFAULT_WORLD)) / "batches" / name


def batch_files(folder: Path, images: int, batch: int) -> list[Path]:
    """An arm's batch files in `folder`: one per `batch` images (the last one may hold fewer)."""
    return [folder / f"batch{k:03d}.npz" for k in range(-(-images // batch))]


def run_arm(models, arm: Arm, sources, batch: int, folder: Path, shard: tuple[int, int] = (0, 1)) -> dict | None:
    """Generate this shard's batches of `arm` (batch k when k % n == i for shard (i, n)) into `folder` (one
    .npz per batch: images, trace JSON, seconds; a finished batch is not redone), then, when every batch is there
    (whichever shard ends last), the arm's numbers; None while other shards' batches are missing. A batch's bytes
    do not depend on which process made it (one thread each)."""
    from higfa.contour import ContourTransform
    from higfa.schedule import Schedule
    from higfa.trace import Trace

    from .seeds import CONTOUR, NOISE, bench_seed

    schedule = Schedule.from_preset(arm.preset, **dict(arm.overrides))
    guide_clf = load_classifier_named(models, arm.guide)
    judge_clf = None if arm.judge is None else load_classifier_named(models, arm.judge)
    folder.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(sources), batch))
    files = batch_files(folder, len(sources), batch)
    for k, (b, file) in enumerate(zip(starts, files)):
        if k % shard[1] != shard[0] or file.is_file():
            continue
        idx = list(range(b, min(b + batch, len(sources))))
        tg = [int(sources.labels[i]) for i in idx]
        t0 = time.perf_counter()
        contours = models.contours(sources.images[idx], [bench_seed(0, CONTOUR, i, 0) for i in idx],
                                   ContourTransform())
        img, res = generate(models, schedule, guide_clf, judge_clf, arm.judge, tg, contours,
                            [bench_seed(0, NOISE, i, 0) for i in idx])
        tmp = folder / f".batch{k:03d}.{os.getpid()}.npz"
        np.savez(tmp, images=img, trace=np.array(res.trace.to_json()), seconds=time.perf_counter() - t0)
        tmp.replace(file)  # atomic: a batch file is whole or absent
        print(f"{arm.name}: batch {k + 1}/{len(starts)}", flush=True)
    if not all(f.is_file() for f in files):
        return None
    loaded = [np.load(f) for f in files]
    images = np.concatenate([z["images"] for z in loaded])
    traces = [Trace.from_json(str(z["trace"])) for z in loaded]
    seconds = float(sum(float(z["seconds"]) for z in loaded))
    labels = np.asarray(sources.labels)
    out = {"settings": arm.settings(), "schedule": schedule.to_dict(), "images": len(images)}
    if arm.judge in TRAINED:
        out["judge_classifier"] = judge_provenance(arm.judge, models.world.name)
    out["trained_classifiers"] = {n: judge_provenance(n, models.world.name) for n in trained_used(arm)}
    out |= verdicts(models, images, labels, guide_clf, judge_clf) | trace_stats(traces)
    out["seconds_per_image"] = round(seconds / len(images), 3)
    return out


def paired_difference(right_a: np.ndarray, right_b: np.ndarray, resamples: int = 10_000, seed: int = 0) -> dict:
    """Arm A's oracle accuracy minus arm B's on the same sources and seeds (right_*: [N] bool per image) with a
    percentile-bootstrap 95 % CI over images (seeded)."""
    d = right_a.astype(np.float64) - right_b.astype(np.float64)
    idx = np.random.default_rng(seed).integers(0, len(d), (resamples, len(d)))
    lo, hi = np.percentile(d[idx].mean(1), [2.5, 97.5])
    return {"a": round(float(right_a.mean()), 4), "b": round(float(right_b.mean()), 4),
            "difference": round(float(d.mean()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "images": len(d), "resamples": resamples}


def table(result: dict) -> str:
    """The probe's result as the markdown table of docs/quality.md "Judge probe"."""
    def f(v, signed=False):
        return "–" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")

    rows = ["| arm | preset (overrides) | guide | judge | oracle species | oracle family | guide acc. (gap) | "
            "judge acc. (gap) | final p_guide / p_judge | gated | no backward | batch steps w/o backward | "
            "mean w_cls | guided step s | judge filter 0.5: kept, oracle kept / dropped |",
            "|" + "---|" * 15]
    for name, a in result["arms"].items():
        st = a["settings"]
        over = ", ".join(f"{k} {v}" for k, v in st["overrides"].items())
        filt = a.get("judge_filter_0.5")
        rows.append(" | ".join([
            f"| {name}", st["preset"] + (f" ({over})" if over else ""), st["guide"], st["judge"] or "–",
            f(a["oracle_species"]), f(a["oracle_family"]), f"{f(a['guide_species'])} ({f(a['guide_fooling_gap'], 1)})",
            f"{f(a.get('judge_species'))} ({f(a.get('judge_fooling_gap'), 1)})",
            f"{f(a['final_p_guide'])} / {f(a['final_p_judge'])}", f(a["gated_fraction"]),
            f(a["no_backward_fraction"]), f(a["batch_steps_without_backward_fraction"]), f(a["mean_stage2_w_cls"]),
            f(a["guided_step_seconds"]),
            "–" if not filt else f"{filt['kept']:.3f}, {f(filt['oracle_species_kept'])} / "
                                 f"{f(filt['oracle_species_dropped'])}"]) + " |")
    return "\n".join(rows)


def judges_table(result: dict) -> str:
    """The classifiers the probe trained that the arms guided or judged with (architecture, seed, training images,
    held-out accuracy), a markdown table; empty when no arm used one."""
    seen = {}
    for a in result["arms"].values():
        if a.get("judge_classifier"):
            seen.setdefault(a["settings"]["judge"], a["judge_classifier"])
        for name, j in (a.get("trained_classifiers") or {}).items():
            seen.setdefault(name, j)
    if not seen:
        return ""
    rows = ["| trained guide or judge | architecture | seed | trained on | test accuracy |", "|---|---|---|---|---|"]
    for name, j in seen.items():
        rows.append(f"| {name} | {j['architecture']} | {j['seed']} | {j['train_images']} few-shot images | "
                    f"{j['test_accuracy']:.3f} ({j['test_images']} images) |")
    return "\n".join(rows)


def split_arms(text: str) -> tuple[set[str], list[str]]:
    """--arms' comma-separated names, some of which hold commas themselves ('higfa-judged+judge=robust,lo0.5'):
    at each piece the longest run of pieces that names an arm. Returns (the arms named, the pieces naming none)."""
    names, parts = {a.name for a in ARMS}, text.split(",")
    chosen, unknown, i = set(), [], 0
    while i < len(parts):
        j = next((j for j in range(len(parts), i, -1) if ",".join(parts[i:j]) in names), None)
        if j is None:
            unknown.append(parts[i])
            i += 1
        else:
            chosen.add(",".join(parts[i:j]))
            i = j
    return chosen, unknown


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-species", type=int, default=8,
                   help="few-shot sources per species (default 8: 128 images, the recorded probe's)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--arms", help="comma-separated arm names (default: all)")
    p.add_argument("--world", default=DEFAULT_WORLD, help="a shipped world (higfa.world.catalog.WORLDS); its "
                   "shipped models")
    p.add_argument("--out", type=Path, default=None, help=f"default {OUT.relative_to(ROOT)}; another world: "
                   "judge_probe_<world>.json beside it")
    p.add_argument("--table", action="store_true", help="only print --out's result as docs/quality.md's table")
    p.add_argument("--paired", nargs=2, metavar=("A", "B"), help="after the arms: the oracle's species accuracy of "
                   "arm A minus arm B on the same images (an arm's batches missing for these settings are made "
                   "first), bootstrap 95 %% CI, recorded under 'paired'")
    p.add_argument("--fresh", action="store_true", help="start --out over when its arms ran with other settings")
    p.add_argument("--shard", default="0/1", help="I/N: make only batches k with k %% N == I (run N processes, "
                   "each with its own I; the one that ends last writes the arm; default 0/1: every batch)")
    args = p.parse_args(argv)
    from higfa.world.catalog import WORLDS, assets

    if args.world not in WORLDS:
        raise SystemExit(f"--world {args.world!r}: choose one of {list(WORLDS)}")
    if args.out is None:
        args.out = OUT if args.world == DEFAULT_WORLD else OUT.with_name(f"judge_probe_{args.world}.json")
    if args.table:
        result = json.loads(args.out.read_text())
        print(table(result))
        if judges_table(result):
            print("\n" + judges_table(result))
        return 0
    torch.set_num_threads(args.threads)
    from higfa.schedule import Schedule
    from higfa.world.models import load_world

    chosen, unknown = split_arms(args.arms) if args.arms else ({a.name for a in ARMS}, [])
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; the arms are {[a.name for a in ARMS]}")
    arms = [a for a in ARMS if a.name in chosen]
    # the recorded settings (images_per_arm follows from per_species): checked before the world loads
    head = {"what": "judge probe on the current world (not the acceptance bench; no downstream)",
            "per_species": args.per_species, "steps": 30, "batch": args.batch, "threads": args.threads,
            "decoder": "vae", "models": "shipped"}
    if args.world != DEFAULT_WORLD:  # the default world's file (and its batches' keys) as before
        head |= {"what": f"judge probe on {args.world} (not the acceptance bench; no downstream)",
                 "world": args.world}
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if {k: result.get(k) for k in head} != head:
        if result.get("arms") and not args.fresh:
            raise SystemExit(f"{args.out} holds arms run with other settings "
                             f"({ {k: result.get(k) for k in head if result.get(k) != head[k]} }): give those "
                             "settings, another --out, or --fresh to start it over")
        result = dict(head)
    models = load_world(assets(args.world))
    sources = models.world.split("fewshot", args.per_species)
    result["images_per_arm"] = len(sources.labels)
    result.setdefault("arms", {})
    shard = tuple(int(x) for x in args.shard.split("/"))
    if len(shard) != 2 or not 0 <= shard[0] < shard[1]:
        raise SystemExit(f"--shard {args.shard}: give I/N with 0 <= I < N, e.g. 0/4")
    for arm in arms:
        done = result["arms"].get(arm.name)
        schedule = Schedule.from_preset(arm.preset, **dict(arm.overrides)).to_dict()
        if done is not None and done["settings"] == arm.settings() and done["schedule"] == schedule:
            if "trained_classifiers" not in done:  # recorded before arms named their trained guides: add them
                result["arms"][arm.name]["trained_classifiers"] = {n: judge_provenance(n, args.world)
                                                                   for n in trained_used(arm)}
                write_result(args.out, result)
            continue  # the same arm, the preset's values included
        numbers = run_arm(models, arm, sources, args.batch, batch_dir(arm, schedule, head), shard)
        if numbers is None:
            print(f"{arm.name}: this shard's batches done; another shard writes the arm", flush=True)
            continue
        print(arm.name, json.dumps({k: v for k, v in numbers.items() if k != "schedule"}), flush=True)
        # read again before writing: other processes (shards, other arms) may have written meanwhile
        result = json.loads(args.out.read_text()) if args.out.is_file() else result
        result.setdefault("arms", {})[arm.name] = numbers
        write_result(args.out, result)
    if args.paired:
        from higfa.training import predict

        right = []
        for name in args.paired:
            arm = next((a for a in ARMS if a.name == name), None)
            if arm is None:
                raise SystemExit(f"--paired: unknown arm {name!r}")
            folder = batch_dir(arm, Schedule.from_preset(arm.preset, **dict(arm.overrides)).to_dict(), head)
            files = batch_files(folder, len(sources.labels), args.batch)
            if not all(f.is_file() for f in files):  # recorded before these settings' batches were kept: made now
                print(f"--paired: making {name}'s batches (the same sources and seeds)", flush=True)
                run_arm(models, arm, sources, args.batch, folder)
            images = np.concatenate([np.load(f)["images"] for f in files])
            right.append(predict(models.oracle, images).argmax(1).numpy() == np.asarray(sources.labels))
        numbers = paired_difference(*right)
        print(f"paired: {args.paired[0]} - {args.paired[1]}", json.dumps(numbers), flush=True)
        result = json.loads(args.out.read_text()) if args.out.is_file() else result
        result.setdefault("paired", {})[f"{args.paired[0]} - {args.paired[1]}"] = numbers
        write_result(args.out, result)
    return 0


def write_result(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)


if __name__ == "__main__":
    raise SystemExit(main())
