"""The converged downstream protocol (issue 24): every arm of a (world, architecture, shots) block trains the same
number of steps, chosen so that the real-only arm has plateaued; two architectures; headroom next to every gain.

- The plateau rule (`plateau`, `choose_steps`): a curve of held-out accuracy against training steps has plateaued
  at S when the accuracy moves less than PLATEAU_TOL (0.005) over the last PLATEAU_TAIL (a quarter) of it, i.e.
  between 0.75·S (linearly interpolated) and S. The step count of a block is the smallest S of a ladder of full
  runs (each a whole cosine schedule of S steps, the protocol's) at which the ladder's mean-over-seeds curve has
  plateaued. `python -m benchmarks.quality.protocol` measures that ladder for the real-only arm and writes
  benchmarks/results/downstream_protocol.json (another world: downstream_protocol_<world>.json; `ladder_file`;
  docs/quality.md "The converged protocol's step count").
- Architectures (`ARCHITECTURES`): `test_resnet` from scratch (the bench's network until now) and `resnet18-pre`,
  the ResNet-18 a user would fine-tune, started from weights pretrained on species of the world that are not
  among its test classes (`pretraining_world`, `pretrained_file`: a cached, seeded step), the way users start
  from ImageNet.
- Headroom (`headroom`): per block, `real_x4 − real` (four times the real images per species, the same steps) and
  the oracle-guided arms' gains (diagnosis only: no product has the oracle), and each arm's gain as a fraction of
  `real_x4 − real`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from higfa.files import atomic_write_bytes
from higfa.world.catalog import DEFAULT
from higfa.jobs.evaluate import paired
from higfa.training import Augment, evaluate, train_classifier

from . import device as on

ROOT = Path(__file__).resolve().parents[2]
PLATEAU_TOL = 0.005  # accuracy may move less than this ...
PLATEAU_TAIL = 0.25  # ... over this last fraction of the steps
# The downstream recipe of both protocols (higfa/jobs/evaluate.py train_and_test + the bench's augmentation).
DOWNSTREAM_AUGMENT = Augment(noise=0.03, blur=1.0)
MORE_REAL = 4  # the headroom arm: this many times the real images per species
# Pretraining on species outside the test classes: images per species of the pretraining world's `train` split,
# steps, batch, learning rate, seed (the recipe is part of the cache key).
PRETRAIN = {"per_species": 100, "steps": 2000, "batch_size": 64, "lr": 3e-3, "seed": 0}
# The pretraining world is the test world's generator with other species and another world seed, so not even a
# render seed is shared with the test world's splits.
PRETRAIN_SEED_OFFSET = 7919


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A downstream network: its timm model, its fine-tuning learning rate, and whether it starts from weights
    pretrained on the world's disjoint species (`PRETRAIN`) or from scratch."""
    name: str
    timm: str
    lr: float = 3e-3
    pretrained: bool = False


ARCHITECTURES = {a.name: a for a in (Architecture("test_resnet", "test_resnet"),
                                     Architecture("resnet18-pre", "resnet18", lr=1e-3, pretrained=True))}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"downstream architecture {name!r}: choose one of {list(ARCHITECTURES)}")
    return ARCHITECTURES[name]


# ------------------------------------------------------------------ the plateau rule
def accuracy_at(curve, step: float) -> float:
    """The accuracy of `curve` ([[steps, accuracy], ...], steps increasing) at `step`, linearly interpolated
    (clamped to the first / last point outside the curve)."""
    s = np.asarray([p[0] for p in curve], dtype=float)
    a = np.asarray([p[1] for p in curve], dtype=float)
    return float(np.interp(step, s, a))


def plateau(curve, tol: float = PLATEAU_TOL, tail: float = PLATEAU_TAIL) -> dict:
    """Has `curve` ([[steps, accuracy], ...], steps increasing, at least 2 points) plateaued at its last point S?
    `moved` = max − min of the accuracy over [(1 − tail)·S, S] (the window's start interpolated); plateaued when
    moved < tol. A curve that does not reach back to (1 − tail)·S cannot say: plateaued False, moved None."""
    if len(curve) < 2:
        raise ValueError(f"plateau: a curve needs at least 2 points, got {len(curve)}")
    steps = [p[0] for p in curve]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"plateau: the curve's steps must increase, got {steps}")
    end = steps[-1]
    start = (1 - tail) * end
    if steps[0] > start:
        return {"plateaued": False, "moved": None, "window": [start, end]}
    inside = [accuracy_at(curve, start)] + [a for s, a in curve if s > start]
    moved = float(max(inside) - min(inside))
    return {"plateaued": moved < tol, "moved": round(moved, 6), "window": [start, end]}


def choose_steps(curve, tol: float = PLATEAU_TOL, tail: float = PLATEAU_TAIL) -> dict:
    """The smallest S of `curve` (a ladder: [[S, mean accuracy of full runs of S steps], ...]) at which the curve up
    to S has plateaued (`plateau`): {"steps": S or None (not within the ladder), "checks": per S its verdict}."""
    curve = sorted([list(p) for p in curve])
    checks = [{"steps": curve[i][0]} | plateau(curve[:i + 1], tol, tail) for i in range(1, len(curve))]
    chosen = next((c["steps"] for c in checks if c["plateaued"]), None)
    return {"steps": chosen, "rule": f"held-out accuracy moves < {tol} over the last {tail:g} of the steps",
            "checks": checks}


# ------------------------------------------------------------------ headroom
def headroom(arms: dict, oracle_arms=(), real: str = "real", more: str = "real_x4") -> dict | None:
    """Headroom of one block. arms: name -> {"per_seed": [...], "seeds": [...]} (paired by seed). Returns
    {"real", "real_x4" (means), "real_x4_gain" (paired more − real: mean, ci95, per_seed), "oracle" (per
    oracle-guided arm, its paired gain over real: diagnosis only), "fraction" (per real+<arm>: its mean gain over
    real / real_x4_gain's mean; None where that headroom is not positive)}; None without both real arms."""
    if real not in arms or more not in arms:
        return None

    def gain(a: str) -> dict:
        common = [s for s in arms[a]["seeds"] if s in arms[real]["seeds"]]
        pick = {n: [x for s, x in zip(arms[n]["seeds"], arms[n]["per_seed"]) if s in common] for n in (a, real)}
        return paired(pick[a], pick[real]) | {"seeds": common}

    room = gain(more)
    out = {real: float(np.mean(arms[real]["per_seed"])), more: float(np.mean(arms[more]["per_seed"])),
           f"{more}_gain": room, "oracle": {a: gain(a) for a in oracle_arms if a in arms}, "fraction": {}}
    for a in arms:
        if a.startswith(f"{real}+"):
            g = gain(a)["mean"]
            out["fraction"][a] = float(g / room["mean"]) if room["mean"] > 0 else None
    return out


# ------------------------------------------------------------------ pretraining on disjoint species
_MARKS = ("crown", "wing_bar", "eye_ring", "beak", "wing_bars", "tail_band", "breast_spots")


def _marks(sp) -> tuple:
    return (sp.family, *[getattr(sp, f) for f in _MARKS])


def pretraining_world(world):
    """The world's generator with species none of whose (family, markings) is a test class: per family, every
    combination of the marking values its species use, less the world's own species (tinybirds: 24 species,
    finebirds: the 2 left-out combinations per family, 16), under another world seed."""
    from higfa.world.drawing import Species

    test = {_marks(s) for s in world.species}
    out = []
    for fam in world.family_names:
        own = [s for s in world.species if s.family == fam]
        values = [list(dict.fromkeys(getattr(s, f) for s in own)) for f in _MARKS]
        for k, combo in enumerate(itertools.product(*values)):
            sp = Species(f"pretrain-{k} {fam}", fam, **dict(zip(_MARKS, combo)))
            if _marks(sp) not in test:
                out.append(sp)
    if not out:
        raise ValueError(f"world {world.name!r}: no marking combination outside its species is left to pretrain on")
    return dataclasses.replace(world, seed=world.seed + PRETRAIN_SEED_OFFSET, species=tuple(out),
                               name=f"{world.name}-pretrain")


def pretrain_key(arch: Architecture, world, recipe: dict = PRETRAIN, device="cpu") -> dict:
    """Everything that decides the pretrained weights: the network, the recipe and the pretraining world's
    definition (species, families, nuisance, seed, size); on a GPU the device (`device.key_part`)."""
    pre = pretraining_world(world)
    spec = {"name": pre.name, "seed": pre.seed, "image_size": pre.image_size, "markings": list(pre.markings),
            "marking_scale": pre.marking_scale, "nuisance": dataclasses.asdict(pre.nuisance),
            "families": [dataclasses.asdict(f) for f in pre.families],
            "species": [dataclasses.asdict(s) for s in pre.species]}
    return json.loads(json.dumps({"timm": arch.timm, "recipe": recipe, "world": spec} | on.key_part(device)))


def pretrained_path(arch: Architecture, world, cache_dir: Path, recipe: dict = PRETRAIN, device="cpu") -> Path:
    """Where `pretrained_file` keeps `arch`'s weights pretrained on `world`'s disjoint species (named by the key's
    digest: what the downstream runs' cache keys name), whether or not they exist yet."""
    key = pretrain_key(arch, world, recipe, device)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"pretrain-{arch.name}-{world.name}-{digest}.safetensors"


def pretrained_file(arch: Architecture, world, cache_dir: Path, recipe: dict = PRETRAIN, log=print,
                    device="cpu") -> Path | None:
    """The cached pretrained weights of `arch` on `world`'s disjoint species (None for a from-scratch network):
    <cache_dir>/pretrain-<arch>-<world>-<key digest>.safetensors with its key beside it (.key.json); trained
    (seeded; on `device`, the same initialisation everywhere) when absent or its key differs."""
    if not arch.pretrained:
        return None
    from safetensors.torch import save

    from higfa.classifier import build_classifier

    device = on.resolve(device)
    key = pretrain_key(arch, world, recipe, device)
    path = pretrained_path(arch, world, cache_dir, recipe, device)
    side = path.with_suffix(".key.json")
    if path.is_file() and side.is_file() and json.loads(side.read_text()) == key:
        return path
    pre = pretraining_world(world)
    data = pre.split("train", recipe["per_species"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        clf = build_classifier(arch.timm, pre.class_names, pre.image_size, mean=(0.5,) * 3, std=(0.5,) * 3)
    log(f"pretraining {arch.name} on {pre.num_classes} species of {pre.name} ({len(data.labels)} images, "
        f"{recipe['steps']} steps, {device.type})")
    train_classifier(clf.to(device), on.to_device(data.images, device), data.labels, steps=recipe["steps"],
                     batch_size=recipe["batch_size"], lr=recipe["lr"], seed=recipe["seed"],
                     augment=on.augment_for(DOWNSTREAM_AUGMENT, device, recipe["seed"]), **_precision(device))
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomic: two processes of one run (scripts/device_bench.sh: the real-only job beside the downstream) may train it
    atomic_write_bytes(path, save({k: v.contiguous().cpu() for k, v in clf.model.state_dict().items()}))
    atomic_write_bytes(side, json.dumps(key, indent=1).encode())
    return path


def build_downstream(arch: Architecture, classes: list[str], size: int, seed: int, pretrained: Path | None,
                     device="cpu"):
    """A fresh downstream classifier, initialised from `seed` (the same for every arm of a seed, on the CPU
    whatever the device: the same initial weights everywhere); with `pretrained`, its backbone from that file (the
    classification head stays the seeded fresh one); then moved to `device`."""
    from higfa.classifier import build_classifier

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = build_classifier(arch.timm, classes, size, mean=(0.5,) * 3, std=(0.5,) * 3)
    if pretrained is not None:
        from safetensors.torch import load_file

        head = clf.model.pretrained_cfg.get("classifier", "fc")
        state = {k: v for k, v in load_file(str(pretrained)).items() if not k.startswith(f"{head}.")}
        missing, unexpected = clf.model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(f"{head}.") for k in missing):
            raise ValueError(f"pretrained weights {pretrained} do not fit {arch.timm}: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}; delete the file to pretrain again")
    return clf if on.resolve(device).type == "cpu" else clf.to(device)


def _precision(device: torch.device) -> dict:
    """train_classifier's precision option on `device`: nothing on the CPU (its call as before); on CUDA float32
    (amp off, cuDNN's default TF32 convolutions): these small networks are launch-bound on a GPU, and float32 keeps
    the GPU runs' arithmetic close to the CPU protocol's."""
    return {} if device.type == "cpu" else {"amp": False}


def train_run(x, y, test_images, test_labels, classes: list[str], *, arch: str, size: int, steps: int, seed: int,
              weights=None, batch_size: int = 64, pretrained: Path | None = None, curve_points: int = 0,
              device="cpu") -> dict:
    """One downstream run: `build_downstream` then the protocol's training (AdamW, cosine, `DOWNSTREAM_AUGMENT`,
    batch seed `seed`) for `steps`; {"accuracy" on the test images, "curve": [[step, accuracy], ...] at
    `curve_points` even steps (the last included; 0: only the end)}. x [N,H,W,3] uint8, y [N], test_images
    [M,H,W,3] uint8 (numpy). On CUDA (`device`) the images live on the GPU as uint8 (each batch and every curve
    point converted there) and the noise is drawn there (`device.DeviceAugment`); the CPU path is as before."""
    a = architecture(arch)
    device = on.resolve(device)
    clf = build_downstream(a, classes, size, seed, pretrained, device)
    every = max(1, steps // curve_points) if curve_points else 0
    x, test_images = on.to_device(x, device), on.to_device(test_images, device)
    r = train_classifier(clf, x, y, steps=steps, batch_size=batch_size, lr=a.lr, weights=weights, seed=seed,
                         augment=on.augment_for(DOWNSTREAM_AUGMENT, device, seed),
                         eval_images=test_images if every else None,
                         eval_labels=test_labels if every else None, eval_every=every, **_precision(device))
    curve = [[int(h["step"]), round(h["accuracy"], 5)] for h in r.history if "accuracy" in h]
    acc = curve[-1][1] if curve else round(evaluate(r.classifier, test_images, test_labels)["accuracy"], 5)
    return {"accuracy": acc, "curve": curve or [[steps, acc]]}


# ------------------------------------------------------------------ measuring the step count
def measure(args) -> dict:
    """The real-only arm's ladder for each (architecture, shots): full runs of every ladder length per seed (each
    with its own held-out curve), their means, the rule's choice. Resumable: runs already in --out are kept."""
    from higfa.world.catalog import make_world

    world = make_world(args.world)
    test = world.split("test", args.test_per_class)
    pool = world.split("fewshot", max(args.shots))
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    device = on.resolve(getattr(args, "device", "cpu"))
    head = {"what": "real-only arm's held-out accuracy against training length (the converged protocol's step "
                    "count; issue 24)", "test_images": len(test.labels), "batch_size": args.batch_size,
            "augment": dataclasses.asdict(DOWNSTREAM_AUGMENT), "pretrain": PRETRAIN} | on.key_part(device)
    if {k: result.get(k) for k in head} != head:
        result = dict(head)
    block = result.setdefault("worlds", {}).setdefault(args.world, {})
    for steps, arch, shots, seed in itertools.product(sorted(args.ladder), args.arch, args.shots, args.seeds):
        a = architecture(arch)
        runs = block.setdefault(arch, {}).setdefault(f"{shots}-shot", {}).setdefault("runs", {})
        name = f"{steps}/{seed}"
        if name in runs:
            continue
        pre = pretrained_file(a, world, args.cache, device=device)
        keep = np.concatenate([pool.of_class(c)[:shots] for c in range(world.num_classes)])
        t0 = time.perf_counter()
        r = train_run(pool.images[keep], pool.labels[keep], test.images, test.labels, world.class_names, arch=arch,
                      size=world.image_size, steps=steps, seed=1000 + seed, batch_size=args.batch_size,
                      pretrained=pre, curve_points=args.curve_points, device=device)
        runs[name] = r | {"steps": steps, "seed": seed, "seconds": round(time.perf_counter() - t0, 1)}
        summarise(block[arch][f"{shots}-shot"])
        print(f"{args.world} {arch} {shots}-shot {steps} steps seed {seed}: {r['accuracy']:.4f} "
              f"(curve {[c[1] for c in r['curve']]}) {runs[name]['seconds']} s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    return result


def summarise(block: dict) -> None:
    """A (architecture, shots) block's ladder: per length the mean accuracy over the seeds every length has, and
    the rule's choice on that curve (in place)."""
    runs = block["runs"].values()
    lengths = sorted({r["steps"] for r in runs})
    seeds = sorted(set.intersection(*[{r["seed"] for r in runs if r["steps"] == n} for n in lengths]))
    ladder = [[n, round(float(np.mean([r["accuracy"] for r in runs if r["steps"] == n and r["seed"] in seeds])), 5)]
              for n in lengths]
    block["seeds"] = seeds
    block["ladder"] = ladder
    block["choice"] = choose_steps(ladder) if len(ladder) > 1 else None


def merge(results: list[dict]) -> dict:
    """One ladder (`measure`'s file) from several measured in parallel processes (one per network, shots and seed,
    scripts/device_bench.sh): their runs together, every block summarised again. Files measured under other
    settings (test images, batch, augmentation, pretraining, device) are refused."""
    out: dict = {}
    for r in results:
        head = {k: v for k, v in r.items() if k != "worlds"}
        first = {k: v for k, v in out.items() if k != "worlds"}
        if first and head != first:
            differ = sorted(k for k in head | first if head.get(k) != first.get(k))
            raise ValueError(f"ladder files measured under other settings ({differ}): merge only the files of one "
                             "measurement")
        out |= head
        for world, archs in r.get("worlds", {}).items():
            for arch, by in archs.items():
                for shots, block in by.items():
                    mine = out.setdefault("worlds", {}).setdefault(world, {}).setdefault(arch, {})
                    mine.setdefault(shots, {"runs": {}})["runs"].update(block["runs"])
    for archs in out.get("worlds", {}).values():
        for by in archs.values():
            for block in by.values():
                summarise(block)
    return out


def ladder_file(world: str = DEFAULT, device="cpu") -> Path:
    """Where a world's ladder is kept: benchmarks/results/downstream_protocol.json for the default world on the CPU,
    downstream_protocol_<world>.json for another world (its test split differs, so its runs cannot share a file's
    settings), _cuda appended for GPU runs."""
    name = "downstream_protocol" + ("" if world == DEFAULT else f"_{world}")
    name += "" if on.resolve(device).type == "cpu" else "_cuda"
    return ROOT / "benchmarks" / "results" / f"{name}.json"


def ladder_table(result: dict) -> str:
    """downstream_protocol.json as docs/quality.md's table: per world, architecture and shots the ladder's mean
    accuracies, the rule's verdict at each length and its choice."""
    rows = ["| world | network | shots | seeds | steps: mean held-out accuracy (moved over the last quarter) | "
            "chosen |", "|---|---|---|---|---|---|"]
    for world, archs in result.get("worlds", {}).items():
        for arch, by_shots in archs.items():
            for shots, b in by_shots.items():
                moved = {c["steps"]: c["moved"] for c in (b.get("choice") or {}).get("checks", [])}
                cells = ", ".join(f"{n}: {a:.3f}" + (f" ({moved[n]:.3f})" if moved.get(n) is not None else "")
                                  for n, a in b["ladder"])
                chosen = (b.get("choice") or {}).get("steps")
                rows.append(f"| {world} | {arch} | {shots} | {len(b['seeds'])} | {cells} | "
                            f"{chosen if chosen else 'not plateaued yet'} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.protocol", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default=DEFAULT)
    p.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), help=f"of {list(ARCHITECTURES)}")
    p.add_argument("--shots", type=int, nargs="+", default=[10, 5, 2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--ladder", type=int, nargs="+", default=[400, 800, 1600, 3200], help="run lengths (steps)")
    p.add_argument("--curve-points", type=int, default=8, help="held-out evaluations along each run")
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "bench_quality", help="pretrained weights")
    p.add_argument("--out", type=Path, default=None, help="the ladder's file (default `ladder_file`: benchmarks/"
                   "results/downstream_protocol.json; another world _<world>, on a GPU _cuda: GPU runs are not CPU "
                   "runs)")
    p.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto (CUDA when available); see "
                   "benchmarks/quality/device.py")
    p.add_argument("--table", action="store_true", help="only print --out's ladder as docs/quality.md's table")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FILE",
                   help="only merge ladder files measured in parallel into --out (and print its table)")
    args = p.parse_args(argv)
    args.device = on.resolve(args.device)
    if args.out is None:
        args.out = ladder_file(args.world, args.device)
    if args.merge:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        merged = merge([json.loads(f.read_text()) for f in args.merge])
        atomic_write_bytes(args.out, (json.dumps(merged, indent=1) + "\n").encode())
    if args.table or args.merge:
        print(ladder_table(json.loads(args.out.read_text())))
        return 0
    on.setup(args.device, args.threads)
    measure(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
