"""The quality bench's downstream runs, SaSPA's protocol (higfa/jobs/evaluate.py): a fresh few-shot classifier per
arm and seed, each real image replaced by one of the arm's variants with probability α; every run's accuracy is
cached in <out>/downstream.json under everything that decides it (`run_key`)."""

from __future__ import annotations

import json

import numpy as np
import torch

from higfa.files import atomic_write_bytes
from higfa.jobs.evaluate import ImageSet, paired, replacement_set, train_and_test
from higfa.training import Augment


def run_key(args, shots: int, arm: str, images: dict | None, seed: int, steps: int, test_images: int) -> str:
    """The cache key of one downstream run: arm `arm` (its generation settings `images`, None for real-only arms)
    at `shots` real images per species, seed, training steps; the protocol's settings from `args`."""
    return json.dumps({"shots": shots, "arm": arm, "images": images, "seed": seed, "steps": steps,
                       "alpha": args.alpha, "arch": args.downstream_arch, "batch": args.batch_size,
                       "test": test_images, "models": str(args.models or "shipped")}, sort_keys=True)


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
    (one torch thread each unless --threads says otherwise); every run is seeded, so the order changes nothing."""
    def run(submit, task):
        key, x, y, w, steps, seed = task
        return submit(train_and_test, x, y, test, world.class_names, architecture=args.downstream_arch,
                      size=world.image_size, steps=steps, seed=1000 + seed, weights=w, batch_size=args.batch_size,
                      augment=Augment(noise=0.03, blur=1.0))

    if args.jobs <= 1 or len(todo) <= 1:
        for task in todo:
            yield task[0], run(lambda f, *a, **k: f(*a, **k), task)["accuracy"]
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads, initargs=(args.threads or 1,)) as pool:
        futures = {run(pool.submit, task): task[0] for task in todo}
        for future in as_completed(futures):
            yield futures[future], future.result()["accuracy"]


def paired_on_common_seeds(res: dict, a: str, b: str) -> dict:
    """Paired differences of arms a and b over the seeds both finished."""
    common = [s for s in res[a]["seeds"] if s in res[b]["seeds"]]
    pick = {arm: [x for s, x in zip(res[arm]["seeds"], res[arm]["per_seed"]) if s in common] for arm in (a, b)}
    return paired(pick[a], pick[b]) | {"seeds": common}
