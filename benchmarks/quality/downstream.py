"""The quality bench's downstream runs: a fresh few-shot classifier per arm and seed, each real image replaced by one
of the arm's variants with probability α (SaSPA, higfa/jobs/evaluate.py). Two protocols:
- `saspa` (`run_downstream`, the bench's until issue 24): one architecture, a number of epochs over each arm's real
  set's size, 10- and 5-shot, real<2·shots> beside;
- `converged` (`run_converged`, benchmarks/quality/protocol.py): per architecture and shots every arm trains the
  same steps (chosen so that the real-only arm has plateaued: `CONVERGED_STEPS`), real_x4 beside, the real arm's
  held-out curve and the headroom in every block.
Every run's result is cached in <out>/downstream.json under everything that decides it (`run_key`,
`converged_key`)."""

from __future__ import annotations

import json

import numpy as np

from higfa.files import atomic_write_bytes
from higfa.jobs.evaluate import ImageSet, paired, replacement_set, train_and_test
from higfa.training import Augment

from . import device as on
from . import protocol


def run_key(args, shots: int, arm: str, images: dict | None, seed: int, steps: int, test_images: int) -> str:
    """The cache key of one downstream run: arm `arm` (its generation settings `images`, None for real-only arms)
    at `shots` real images per species, seed, training steps; the protocol's settings from `args`."""
    key = {"shots": shots, "arm": arm, "images": images, "seed": seed, "steps": steps, "alpha": args.alpha,
           "arch": args.downstream_arch, "batch": args.batch_size, "test": test_images,
           "models": str(args.models or "shipped")}
    if getattr(args, "world", "tinybirds") != "tinybirds":  # tinybirds' keys stay those of the one-world bench
        key["world"] = args.world
    return json.dumps(key | on.key_part(on.of(args)), sort_keys=True)  # a GPU's runs are its own (device.py)


def training_sets(args, world, real_all, shots: int, generated: dict, settings: dict) -> tuple[dict, dict]:
    """The arms at `shots` real images per species: name -> (images, labels, weights or None, real images), and
    name -> generation settings (None for real-only arms). real; real+<arm> for each --downstream arm (its images
    of the first `shots` sources per species, those its confidence filter keeps); at --shots also real<2·shots>
    ("more real data": twice the real images, the same epochs)."""
    keep = np.concatenate([real_all.of_class(c)[:shots] for c in range(world.num_classes)])
    real = ImageSet(real_all.images[keep], real_all.labels[keep], [])
    # the generation sources are the first `args.shots` real images per species, in class-major order
    src_map = {c * args.shots + i: c * shots + i for c in range(world.num_classes) for i in range(shots)}
    arms = {"real": (real.images, real.labels, None, len(real.labels))}
    keys = {"real": None}
    for name in args.downstream:
        g = generated[name]
        use = np.array([s in src_map for s in g["source"].tolist()]) & g.get("keep", True)
        src = np.array([src_map[s] for s in g["source"][use].tolist()], dtype=np.int64)
        arms[f"real+{name}"] = (*replacement_set(real.images, real.labels, g["images"][use], g["targets"][use],
                                                 src, args.alpha), len(real.labels))
        keys[f"real+{name}"] = settings[name]
    if shots == args.shots:
        more = np.concatenate([real_all.of_class(c)[:2 * shots] for c in range(world.num_classes)])
        arms[f"real{2 * shots}"] = (real_all.images[more], real_all.labels[more], None, len(more))
        keys[f"real{2 * shots}"] = None
    return arms, keys


def run_downstream(args, world, generated: dict, settings: dict, test, bar) -> dict:
    """protocol -> shots -> arm -> {per_seed, mean, std, steps, images}; plus paired differences.
    Each run's accuracy is cached in <out>/downstream.json under its `run_key`."""
    cache_file = args.out / "downstream.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    real_all = world.split("fewshot", max(args.shots, 2 * args.shots))
    out = {}
    for shots in args.downstream_shots:
        arms, keys = training_sets(args, world, real_all, shots, generated, settings)

        def key_of(arm, s, steps, shots=shots, keys=keys):
            return run_key(args, shots, arm, keys[arm], s, steps, len(test))

        steps_of = {arm: max(1, round(args.epochs * n / args.batch_size)) for arm, (_, _, _, n) in arms.items()}
        todo = [] if args.downstream_from_cache else [
            (key_of(arm, s, steps_of[arm]), x, y, w, steps_of[arm], s)
            for arm, (x, y, w, n) in arms.items() for s in args.seeds if key_of(arm, s, steps_of[arm]) not in cache]
        for key, acc in run_all(todo, test, world, args):
            cache[key] = acc
            # a killed run keeps what it finished; merged with what a parallel run wrote meanwhile
            on_disk = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
            cache = on_disk | cache
            atomic_write_bytes(cache_file, json.dumps(cache, indent=0).encode())
            bar.update(1)
        res = {}
        for arm, (_, y, w, n) in arms.items():
            runs = [(s, cache[key_of(arm, s, steps_of[arm])]) for s in args.seeds
                    if key_of(arm, s, steps_of[arm]) in cache]  # --downstream-from-cache: unfinished seeds left out
            if runs:
                accs = [acc for _, acc in runs]
                res[arm] = {"per_seed": accs, "seeds": [s for s, _ in runs], "mean": float(np.mean(accs)),
                            "std": float(np.std(accs)), "steps": steps_of[arm],
                            "real_images": n, "synthetic_images": int(len(y) - n) if w is not None else 0}
        res["paired"] = {f"{a} - {b}": paired_on_common_seeds(res, a, b) for a, b in
                         [(a, "real") for a in res if a != "real"]
                         + [(a, "real+cfg") for a in res if a.startswith("real+higfa")]
                         if a in res and b in res}
        out[f"{shots}-shot"] = res
    # downstream.saspa.<arm>.per_seed: the --shots setting at the top, the other shot counts beside it
    main = out.pop(f"{args.shots}-shot", {})
    return {"saspa": main | {"shots": args.shots} | out}


def run_all(todo: list, test, world, args):
    """(key, accuracy) of each downstream run as it finishes: in this process, or in `--jobs` worker processes
    (one torch thread each unless --threads says otherwise; on CUDA spawned, not forked, all on the one device);
    every run is seeded, so the order changes nothing."""
    device = on.of(args)
    where = {"device": device}  # on the CPU both functions compute exactly what they did without it

    def run(submit, task):
        if len(task) == 9:  # the converged protocol: (key, x, y, w, steps, seed, architecture, pretrained, curve)
            key, x, y, w, steps, seed, arch, pre, points = task
            return submit(protocol.train_run, x, y, test.images, test.labels, world.class_names, arch=arch,
                          size=world.image_size, steps=steps, seed=1000 + seed, weights=w,
                          batch_size=args.batch_size, pretrained=pre, curve_points=points, **where)
        key, x, y, w, steps, seed = task
        return submit(train_and_test, x, y, test, world.class_names, architecture=args.downstream_arch,
                      size=world.image_size, steps=steps, seed=1000 + seed, weights=w, batch_size=args.batch_size,
                      augment=Augment(noise=0.03, blur=1.0), **where)

    def value(task, result):  # the saspa protocol caches the accuracy, the converged one the accuracy + curve
        return result if len(task) == 9 else result["accuracy"]

    if args.jobs <= 1 or len(todo) <= 1:
        for task in todo:
            yield task[0], value(task, run(lambda f, *a, **k: f(*a, **k), task))
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(args.jobs, mp_context=on.pool_context(device), initializer=on.setup,
                             initargs=(device, args.threads or 1)) as pool:
        futures = {run(pool.submit, task): task for task in todo}
        for future in as_completed(futures):
            yield futures[future][0], value(futures[future], future.result())


def paired_on_common_seeds(res: dict, a: str, b: str) -> dict:
    """Paired differences of arms a and b over the seeds both finished."""
    common = [s for s in res[a]["seeds"] if s in res[b]["seeds"]]
    pick = {arm: [x for s, x in zip(res[arm]["seeds"], res[arm]["per_seed"]) if s in common] for arm in (a, b)}
    return paired(pick[a], pick[b]) | {"seeds": common}


# The converged protocol's steps per world, architecture and shots: the smallest length at which the real-only arm's
# held-out accuracy moved < 0.005 over the last quarter (protocol.choose_steps) on the world's ladder
# (benchmarks/results/downstream_protocol.json, finebirds: downstream_protocol_finebirds.json; docs/quality.md "The
# converged protocol's step count"; tests check the two agree where the ladder chose one). Where the ladder has not
# plateaued yet: twice its longest length, provisional; where it has not run, the other network's, provisional too.
CONVERGED_STEPS = {
    "tinybirds": {"test_resnet": {10: 4800, 5: 2400, 2: 600}, "resnet18-pre": {10: 4800, 5: 2400, 2: 600}},
    "finebirds": {"test_resnet": {10: 9600, 5: 4800, 2: 1200}, "resnet18-pre": {10: 4800, 5: 2400, 2: 600}},
}
# The (world, architecture, shots) whose CONVERGED_STEPS the ladder chose; the others are provisional (each block says
# which).
LADDER_CHOSEN: set[tuple[str, str, int]] = {("tinybirds", "test_resnet", 2), ("finebirds", "resnet18-pre", 10)}
CONVERGED_SHOTS = (10, 5, 2)
CURVE_POINTS = 8  # held-out evaluations along the real arm's run (the block's curve)


def converged_key(args, world_name: str, arch: str, pretrained: str | None, shots: int, arm: str,
                  images: dict | None, seed: int, steps: int, test_images: int) -> str:
    """The cache key of one converged-protocol run (none of the saspa protocol's keys can equal it)."""
    a = protocol.architecture(arch)
    return json.dumps({"protocol": "converged", "world": world_name, "shots": shots, "arm": arm, "images": images,
                       "seed": seed, "steps": steps, "alpha": args.alpha, "arch": a.timm, "lr": a.lr,
                       "pretrained": pretrained, "batch": args.batch_size, "test": test_images,
                       "augment": protocol.DOWNSTREAM_AUGMENT.__dict__, "curve": CURVE_POINTS if arm == "real" else 0,
                       "models": str(args.models or "shipped")} | on.key_part(on.of(args)), sort_keys=True)


def converged_sets(args, world, real_all, shots: int, generated: dict, settings: dict) -> tuple[dict, dict]:
    """`training_sets` at `shots` for the converged protocol: real, real_x4 (protocol.MORE_REAL times the real
    images per species) and real+<arm> for each --downstream arm, at every shot count."""
    arms, keys = training_sets(args, world, real_all, shots, generated, settings)
    arms = {k: v for k, v in arms.items() if k != f"real{2 * shots}"}
    keys = {k: v for k, v in keys.items() if k != f"real{2 * shots}"}
    more = np.concatenate([real_all.of_class(c)[:protocol.MORE_REAL * shots] for c in range(world.num_classes)])
    arms["real_x4"] = (real_all.images[more], real_all.labels[more], None, len(more))
    keys["real_x4"] = None
    return arms, keys


def run_converged(args, world, world_name: str, generated: dict, settings: dict, test, bar) -> dict:
    """{architecture: {"<k>-shot": block}}, block = {"steps", "arms": {arm: {per_seed, seeds, mean, std,
    real_images, synthetic_images}}, "paired", "curve" (the real arm's held-out curve per seed), "plateau" (the
    rule on each), "headroom"}. Oracle-guided arms (guide=oracle) count as the upper bound of the headroom."""
    cache_file = args.out / "downstream.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    shots_list = args.downstream_shots or list(CONVERGED_SHOTS)
    real_all = world.split("fewshot", max(args.shots, protocol.MORE_REAL * max(shots_list)))
    oracle_arms = [f"real+{a.name}" for a in getattr(args, "arm_list", []) if a.guide == "oracle"]
    out = {}
    for arch in args.archs:
        a = protocol.architecture(arch)
        # --downstream-from-cache trains nothing: the weights' name (their key's digest) finds the cached runs
        pre = (None if not a.pretrained else protocol.pretrained_path(a, world, args.out, device=on.of(args))) \
            if args.downstream_from_cache else protocol.pretrained_file(a, world, args.out, device=on.of(args))
        pre_id = None if pre is None else pre.name
        out[arch] = {}
        for shots in shots_list:
            steps = steps_for(args, world_name, arch, shots)
            arms, keys = converged_sets(args, world, real_all, shots, generated, settings)
            key_of = {(arm, s): converged_key(args, world_name, arch, pre_id, shots, arm, keys[arm], s, steps,
                                              len(test)) for arm in arms for s in args.seeds}
            todo = [] if args.downstream_from_cache else [
                (key_of[arm, s], x, y, w, steps, s, arch, pre, CURVE_POINTS if arm == "real" else 0)
                for arm, (x, y, w, _) in arms.items() for s in args.seeds if key_of[arm, s] not in cache]
            for key, result in run_all(todo, test, world, args):
                cache[key] = result
                on_disk = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
                cache = on_disk | cache
                atomic_write_bytes(cache_file, json.dumps(cache, indent=0).encode())
                bar.update(1)
            out[arch][f"{shots}-shot"] = converged_block(arms, key_of, cache, args.seeds, steps, oracle_arms) | {
                "steps_from": ("--downstream-steps" if args.downstream_steps else
                               "ladder" if (world_name, arch, shots) in LADDER_CHOSEN else "provisional")}
    return out


def steps_for(args, world_name: str, arch: str, shots: int) -> int:
    """--downstream-steps when given, else CONVERGED_STEPS (the world's ladder's choice)."""
    if args.downstream_steps:
        return args.downstream_steps
    if shots not in CONVERGED_STEPS.get(world_name, {}).get(arch, {}):
        raise ValueError(f"--downstream-shots {shots}: the converged protocol has no step count for {arch} at "
                         f"{shots}-shot on {world_name} (CONVERGED_STEPS); measure it (python -m "
                         "benchmarks.quality.protocol --world ...) or pass --downstream-steps")
    return CONVERGED_STEPS[world_name][arch][shots]


def converged_block(arms: dict, key_of: dict, cache: dict, seeds, steps: int, oracle_arms) -> dict:
    """One (architecture, shots) block of `run_converged` from the cached runs (unfinished seeds left out)."""
    res: dict = {}
    for arm, (_, y, w, n) in arms.items():
        runs = [(s, cache[key_of[arm, s]]) for s in seeds if key_of[arm, s] in cache]
        if runs:
            accs = [r["accuracy"] for _, r in runs]
            res[arm] = {"per_seed": accs, "seeds": [s for s, _ in runs], "mean": float(np.mean(accs)),
                        "std": float(np.std(accs)), "real_images": n,
                        "synthetic_images": int(len(y) - n) if w is not None else 0}
    curve = {str(s): cache[key_of["real", s]]["curve"] for s in seeds if key_of["real", s] in cache}
    pairs = [(a, "real") for a in res if a != "real"] + [(a, "real+cfg") for a in res if a.startswith("real+higfa")]
    return {"steps": steps, "arms": res,
            "paired": {f"{a} - {b}": paired_on_common_seeds(res, a, b) for a, b in pairs if a in res and b in res},
            "curve": curve,
            "plateau": {s: protocol.plateau(c) for s, c in curve.items() if len(c) >= 2},
            "headroom": protocol.headroom(res, [a for a in oracle_arms if a in res])}
