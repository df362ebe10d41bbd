"""The quality bench's converged downstream protocol (issue 24, benchmarks/quality/protocol.py): the plateau rule,
the headroom arithmetic, pretraining on species outside the test classes (disjoint, cached under its key), and the
per-world results layout with the protocol's blocks (tiny budgets: a few steps, a few images)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.quality import protocol
from benchmarks.quality import run as quality
from benchmarks.quality.downstream import CONVERGED_SHOTS, CONVERGED_STEPS, LADDER_CHOSEN
from benchmarks.quality.report import merge_world, report

ROOT = Path(__file__).resolve().parents[1]


def test_plateau_rule_reads_the_last_quarter_of_a_curve():
    rising = [[100, 0.50], [200, 0.60], [300, 0.66], [400, 0.70]]
    v = protocol.plateau(rising)
    assert not v["plateaued"] and v["window"] == [300.0, 400] and v["moved"] == pytest.approx(0.04)
    flat = [[100, 0.50], [200, 0.80], [300, 0.803], [400, 0.801]]
    v = protocol.plateau(flat)
    assert v["plateaued"] and v["moved"] == pytest.approx(0.002)  # max 0.803 - min 0.801 inside [300, 400]
    # the window's start interpolated: 0.75 * 800 = 600 lies halfway between 400 (0.70) and 800 (0.72)
    v = protocol.plateau([[400, 0.70], [800, 0.72]])
    assert v["window"] == [600.0, 800] and v["moved"] == pytest.approx(0.01) and not v["plateaued"]
    assert protocol.plateau([[400, 0.70], [800, 0.708]])["plateaued"]  # moved 0.004 < 0.005
    short = protocol.plateau([[700, 0.5], [800, 0.5]])  # does not reach back to 600: cannot say
    assert short == {"plateaued": False, "moved": None, "window": [600.0, 800]}
    with pytest.raises(ValueError, match="at least 2 points"):
        protocol.plateau([[100, 0.5]])
    with pytest.raises(ValueError, match="must increase"):
        protocol.plateau([[200, 0.5], [100, 0.6]])


def test_choose_steps_takes_the_first_length_of_the_ladder_that_plateaued():
    ladder = [[300, 0.70], [600, 0.80], [1200, 0.86], [2400, 0.865], [4800, 0.866]]
    c = protocol.choose_steps(ladder)
    # 600: moved (0.80-0.70)/2; 1200: (0.86-0.80)/2 = 0.03; 2400: 0.0025 -> chosen
    assert c["steps"] == 2400 and [x["steps"] for x in c["checks"]] == [600, 1200, 2400, 4800]
    assert [x["plateaued"] for x in c["checks"]] == [False, False, True, True]
    assert protocol.choose_steps([[300, 0.7], [600, 0.8]])["steps"] is None  # still climbing at the longest
    assert protocol.choose_steps(list(reversed(ladder)))["steps"] == 2400  # the ladder's order does not matter


def test_a_ladder_is_summarised_over_the_seeds_every_length_has():
    runs = {f"{n}/{s}": {"steps": n, "seed": s, "accuracy": a} for n, s, a in (
        (300, 0, 0.70), (300, 1, 0.72), (600, 0, 0.80), (600, 1, 0.82), (1200, 0, 0.803), (1200, 1, 0.821),
        (2400, 0, 0.9))}  # seed 1 has no 2400 run: the means use seed 0 only
    block = {"runs": runs}
    protocol.summarise(block)
    assert block["seeds"] == [0] and block["ladder"] == [[300, 0.7], [600, 0.8], [1200, 0.803], [2400, 0.9]]
    assert block["choice"]["steps"] == 1200  # (0.803 - 0.8) over [900, 1200] moved 0.0015
    table = protocol.ladder_table({"worlds": {"tinybirds": {"test_resnet": {"10-shot": block}}}})
    assert "| tinybirds | test_resnet | 10-shot | 1 | 300: 0.700, 600: 0.800 (0.050), 1200: 0.803 (0.002)" in table
    assert table.rstrip().endswith("| 1200 |")


def test_headroom_arithmetic():
    arms = {"real": {"per_seed": [0.60, 0.62, 0.64], "seeds": [0, 1, 2]},
            "real_x4": {"per_seed": [0.80, 0.80, 0.82], "seeds": [0, 1, 2]},
            "real+higfa": {"per_seed": [0.65, 0.67, 0.69], "seeds": [0, 1, 2]},
            "real+oracle": {"per_seed": [0.70, 0.74], "seeds": [0, 2]}}
    h = protocol.headroom(arms, ["real+oracle"])
    assert h["real"] == pytest.approx(0.62) and h["real_x4"] == pytest.approx(2.42 / 3)
    assert h["real_x4_gain"]["per_seed"] == pytest.approx([0.20, 0.18, 0.18])
    assert h["real_x4_gain"]["mean"] == pytest.approx(0.56 / 3) and h["real_x4_gain"]["ci95"][0] > 0
    assert h["fraction"]["real+higfa"] == pytest.approx(0.05 / (0.56 / 3))
    assert h["oracle"]["real+oracle"]["per_seed"] == pytest.approx([0.10, 0.10])  # seeds 0 and 2 only (paired)
    assert h["oracle"]["real+oracle"]["seeds"] == [0, 2]
    assert protocol.headroom({"real": arms["real"]}) is None  # no real_x4: no headroom
    worse = arms | {"real_x4": {"per_seed": [0.6, 0.6, 0.6], "seeds": [0, 1, 2]}}
    assert protocol.headroom(worse)["fraction"]["real+higfa"] is None  # no positive headroom: no fraction


@pytest.mark.parametrize("name,count", [("tinybirds", 24), ("finebirds", 16)])
def test_pretraining_species_are_disjoint_from_the_test_species(name, count):
    from higfa.world.catalog import make_world

    world = make_world(name)
    pre = protocol.pretraining_world(world)
    marks = {protocol._marks(s) for s in world.species}
    assert pre.num_classes == count and not {protocol._marks(s) for s in pre.species} & marks
    assert len({protocol._marks(s) for s in pre.species}) == pre.num_classes  # no two pretraining species alike
    assert not set(pre.class_names) & set(world.class_names)
    assert pre.family_names == world.family_names and pre.seed != world.seed and pre.nuisance == world.nuisance
    # not one image of the test world's splits: other seeds for every split
    assert not set(pre.split_seeds("train", 5)[1]) & set(world.split_seeds("test", 50)[1])


def test_pretrained_weights_are_cached_under_their_key(tmp_path):
    from higfa.world.catalog import make_world

    world = make_world("tinybirds")
    arch = protocol.Architecture("tiny-pre", "test_resnet", pretrained=True)
    recipe = protocol.PRETRAIN | {"per_species": 1, "steps": 2}
    assert protocol.pretrained_file(protocol.ARCHITECTURES["test_resnet"], world, tmp_path) is None  # from scratch
    path = protocol.pretrained_file(arch, world, tmp_path, recipe, log=lambda *_: None)
    assert path.is_file() and json.loads(path.with_suffix(".key.json").read_text()) == protocol.pretrain_key(
        arch, world, recipe)
    stamp = path.stat().st_mtime_ns
    assert protocol.pretrained_file(arch, world, tmp_path, recipe) == path and path.stat().st_mtime_ns == stamp
    other = protocol.pretrained_file(arch, world, tmp_path, recipe | {"seed": 1}, log=lambda *_: None)
    assert other != path and other.is_file()  # another recipe: another file, the first kept
    assert protocol.pretrain_key(arch, world, recipe) != protocol.pretrain_key(
        arch, protocol.pretraining_world(world), recipe)
    # the downstream network takes the backbone, and a fresh seeded head for the test classes
    from safetensors.torch import load_file

    clf = protocol.build_downstream(arch, world.class_names, 64, seed=3, pretrained=path)
    state = load_file(str(path))
    mine = clf.model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert clf.model.fc.weight.shape[0] == 16 != state["fc.weight"].shape[0]
    again = protocol.build_downstream(arch, world.class_names, 64, seed=3, pretrained=path)
    assert torch.equal(again.model.fc.weight, clf.model.fc.weight)


def test_converged_steps_are_the_ladders_choice_where_it_chose():
    """downstream.CONVERGED_STEPS holds what each world's ladder file (protocol.ladder_file) chose, and marks
    every other block provisional (40-shot ladders, the headroom arm's size, are measured but choose nothing)."""
    chose = set()
    for world in CONVERGED_STEPS:
        path = protocol.ladder_file(world)
        measured = json.loads(path.read_text()) if path.is_file() else {"worlds": {}}
        assert set(measured["worlds"]) <= {world}, path  # a world's file holds only its ladder
        for arch, by_shots in measured["worlds"].get(world, {}).items():
            for shots, block in by_shots.items():
                n = int(shots.split("-")[0])
                if n in CONVERGED_SHOTS and block.get("choice") and block["choice"]["steps"] is not None:
                    assert CONVERGED_STEPS[world][arch][n] == block["choice"]["steps"], (world, arch, shots)
                    chose.add((world, arch, n))
    assert chose and LADDER_CHOSEN == chose  # every other block is marked provisional
    assert protocol.ladder_file("tinybirds").name == "downstream_protocol.json"
    assert protocol.ladder_file("finebirds").name == "downstream_protocol_finebirds.json"


def test_results_are_per_world_with_converged_blocks(tmp_path, monkeypatch):
    """A tiny converged run: worlds.tinybirds holds presets/ceiling/world/downstream; downstream.converged.<arch>.
    <k>-shot blocks carry steps, per-seed accuracies per arm, the real arm's curve and plateau verdict, the
    headroom (real_x4 and the oracle-guided arm); each preset its resolved schedule, judge and gate counts. Another
    world's section already in the file survives; the report renders every world."""
    monkeypatch.setitem(protocol.ARCHITECTURES, "tiny-pre", protocol.Architecture("tiny-pre", "test_resnet",
                                                                                  pretrained=True))
    monkeypatch.setitem(protocol.PRETRAIN, "steps", 2)
    monkeypatch.setitem(protocol.PRETRAIN, "per_species", 1)
    judge = ROOT / "higfa" / "world" / "assets" / "guidance_robust.safetensors"
    out, results, doc = tmp_path / "out", tmp_path / "quality.json", tmp_path / "quality.md"
    args = ["--shots", "2", "--fidelity-shots", "1", "--steps", "2", "--presets", "cfg", "higfa",
            "--extra", "oracle-guided=higfa,guide=oracle", f"judged=higfa-judged,judge={judge}",
            "--downstream", "cfg", "oracle-guided", "--downstream-shots", "2", "1", "--seeds", "0", "1",
            "--downstream-steps", "4", "--archs", "test_resnet", "tiny-pre", "--test-per-class", "2",
            "--threads", "1", "--out", str(out), "--results", str(results), "--doc", str(doc)]
    assert quality.main(args) == 0
    r = json.loads(results.read_text())
    w = r["worlds"]["tinybirds"]
    assert {"presets", "ceiling", "world", "downstream", "settings"} <= set(w) and w["settings"]["world"] == "tinybirds"
    assert set(w["downstream"]) == {"converged"} and set(w["downstream"]["converged"]) == {"test_resnet", "tiny-pre"}
    for arch in ("test_resnet", "tiny-pre"):
        for shots in ("2-shot", "1-shot"):
            b = w["downstream"]["converged"][arch][shots]
            assert b["steps"] == 4 and b["steps_from"] == "--downstream-steps"
            assert set(b["arms"]) == {"real", "real_x4", "real+cfg", "real+oracle-guided"}
            assert all(len(a["per_seed"]) == 2 for a in b["arms"].values())
            k = int(shots[0])
            assert b["arms"]["real_x4"]["real_images"] == 4 * b["arms"]["real"]["real_images"] == 4 * 16 * k
            assert set(b["curve"]) == {"0", "1"} and b["curve"]["0"][-1][0] == 4
            assert b["curve"]["0"][-1][1] == b["arms"]["real"]["per_seed"][0]  # the curve ends at the run's accuracy
            assert set(b["plateau"]) == {"0", "1"} and "moved" in b["plateau"]["0"]
            h = b["headroom"]
            assert h["real_x4_gain"]["per_seed"] == pytest.approx(
                [x - y for x, y in zip(b["arms"]["real_x4"]["per_seed"], b["arms"]["real"]["per_seed"])])
            assert set(h["oracle"]) == {"real+oracle-guided"} and set(h["fraction"]) == {"real+cfg",
                                                                                         "real+oracle-guided"}
    assert len(list(out.glob("pretrain-tiny-pre-tinybirds-*.safetensors"))) == 1
    for name, p in w["presets"].items():
        assert p["schedule"]["classifier_scale"] >= 0 and p["guided_sample_steps"] >= 0, name
        # the judge named from the repository's root (results carry no machine's folders)
        shown = "higfa/world/assets/guidance_robust.safetensors"
        assert (p["judge"], p["judge_species"] is None) == ((shown, False) if name == "judged" else (None, True))
    assert w["presets"]["judged"]["schedule"]["modulate"] and 0 <= w["presets"]["judged"]["judge_species"] <= 1
    text = doc.read_text()
    assert "## World `tinybirds`" in text and "### Downstream, converged protocol, `tiny-pre`, 1-shot" in text
    assert "real_x4 − real = **" in text and "| real+oracle-guided |" in text
    # a rerun (everything cached) replaces only its own world's section
    results.write_text(json.dumps({"worlds": {"tinybirds": {}, "finebirds": w | {"kept": True}}}))
    assert quality.main(args[:-2] + ["--doc", ""]) == 0
    again = json.loads(results.read_text())["worlds"]
    assert again["finebirds"] == w | {"kept": True} and again["tinybirds"]["downstream"] == w["downstream"]
    assert report({"worlds": again}).count("## World `") == 2
    # a results file from before worlds is tinybirds' section
    old = {"presets": {"cfg": {}}, "settings": {}}
    assert merge_world(old, "finebirds", {"presets": {}})["worlds"]["tinybirds"] == old
    with pytest.raises(ValueError, match="no section for world 'finebirds'"):
        merge_world(old, "finebirds", None)


# ------------------------------------------------------------------ the device (--device, benchmarks/quality/device.py)
def _tiny_converged(tmp_path: Path, name: str, extra: list[str]) -> tuple[list[str], Path, Path]:
    """A tiny converged run: higfa, one source per species, 2 sampling steps, 3 downstream steps, test_resnet and
    a pretrained test_resnet ("tiny-pre"); (its arguments, cache folder, results file)."""
    out, results = tmp_path / name / "out", tmp_path / name / "quality.json"
    args = ["--shots", "1", "--steps", "2", "--presets", "higfa", "--downstream", "higfa", "--downstream-shots", "1",
            "--seeds", "0", "--downstream-steps", "3", "--archs", "test_resnet", "tiny-pre", "--test-per-class", "1",
            "--threads", "1", "--out", str(out), "--results", str(results), "--doc", "", *extra]
    return args, out, results


def _tiny_pre(monkeypatch):
    monkeypatch.setitem(protocol.ARCHITECTURES, "tiny-pre", protocol.Architecture("tiny-pre", "test_resnet",
                                                                                  pretrained=True))
    monkeypatch.setitem(protocol.PRETRAIN, "steps", 2)
    monkeypatch.setitem(protocol.PRETRAIN, "per_species", 1)


def _timeless(section: dict) -> dict:
    """A world's results without what the clock decides (run times)."""
    out = {k: v for k, v in section.items() if k != "seconds_total"}
    out["presets"] = {n: {k: v for k, v in p.items() if k != "seconds_per_image"} for n, p in out["presets"].items()}
    return out


def test_device_cpu_is_the_default_to_the_byte(tmp_path, monkeypatch):
    """--device cpu computes what a run without --device computes: the same images, the same downstream runs under
    the same cache keys, the same pretrained weights file, the same results (run times aside)."""
    _tiny_pre(monkeypatch)
    runs = {}
    for name, extra in (("default", []), ("cpu", ["--device", "cpu"])):
        args, out, results = _tiny_converged(tmp_path, name, extra)
        assert quality.main(args) == 0
        runs[name] = (out, json.loads(results.read_text())["worlds"]["tinybirds"])
    (a, ra), (b, rb) = runs["default"], runs["cpu"]
    assert _timeless(ra) == _timeless(rb) and "device" not in ra["settings"]
    da, db = np.load(a / "higfa.npz"), np.load(b / "higfa.npz")
    assert all(np.array_equal(da[k], db[k]) for k in ("images", "contours", "targets", "source"))
    assert (a / "downstream.json").read_bytes() == (b / "downstream.json").read_bytes()  # keys and accuracies
    pre = sorted(p.name for p in a.glob("pretrain-*.safetensors"))
    assert pre == sorted(p.name for p in b.glob("pretrain-*.safetensors")) and len(pre) == 1
    assert (a / pre[0]).read_bytes() == (b / pre[0]).read_bytes()


def test_the_device_reaches_every_model_classifier_and_run(tmp_path, monkeypatch):
    """With a --device, every model the bench builds or loads gets it: the world models, the guides (shipped, a
    file, the second-round one trained in the run, the tuned one), the judge, the confidence filter, the scorer, the
    pretraining and every downstream run."""
    import types

    import higfa.jobs.second_round as second_round
    import higfa.jobs.tuning as tuning
    from benchmarks.quality import guides, score
    from higfa.classifier import load_classifier as real_load

    _tiny_pre(monkeypatch)
    monkeypatch.setitem(guides.BOOT, "steps", 2)
    cpu, seen = torch.device("cpu"), []

    def spy(name, fn, position):
        def wrapped(*a, **k):
            dev = k.get("device", a[position] if len(a) > position else None)
            seen.append((name, dev))
            return fn(*a, **k)
        return wrapped

    def fake_tune(clf, model, data, recipe, *, device="cpu", progress=True):  # no tuning: only where it would run
        seen.append(("tune_guide", torch.device(device)))
        assert next(clf.parameters()).device == torch.device(device) and data == "builtin:fewshot"
        return types.SimpleNamespace(classifier=clf, stage_boundary=0.5, steps=0)

    monkeypatch.setattr(quality, "load_world", spy("load_world", quality.load_world, 1))
    monkeypatch.setattr(quality, "load_scorer", spy("load_scorer", quality.load_scorer, 1))
    for module in (quality, guides, score):
        monkeypatch.setattr(module, "load_classifier", spy(f"{module.__name__}.load_classifier", real_load, 1),
                            raising=False)
    monkeypatch.setattr(protocol, "train_run", spy("train_run", protocol.train_run, 99))
    monkeypatch.setattr(protocol, "pretrained_file", spy("pretrained_file", protocol.pretrained_file, 5))
    monkeypatch.setattr(tuning, "tune_guide", fake_tune)
    train_on_round = second_round.train_on_round

    def boot_training(clf, *a, **k):  # the second-round guide trains where the world models are
        seen.append(("train_on_round", next(clf.parameters()).device))
        return train_on_round(clf, *a, **k)

    monkeypatch.setattr(second_round, "train_on_round", boot_training)
    shipped = ROOT / "higfa" / "world" / "assets"
    args, out, results = _tiny_converged(tmp_path, "spy", [
        "--device", "cpu", "--extra", f"file=higfa,guide={shipped / 'guidance_robust.safetensors'}",
        f"judged=higfa-judged,judge={shipped / 'guidance_robust.safetensors'}",
        f"filtered=higfa,filter={shipped / 'guidance_robust.safetensors'}", "boot=higfa,guide=boot:higfa,tune=0.03"])
    assert quality.main(args) == 0
    names = {n for n, _ in seen}
    assert {"load_world", "load_scorer", "train_run", "pretrained_file", "tune_guide", "train_on_round",
            "benchmarks.quality.run.load_classifier", "benchmarks.quality.guides.load_classifier",
            "benchmarks.quality.score.load_classifier"} <= names, names
    assert all(d == cpu for _, d in seen), [x for x in seen if x[1] != cpu]  # every call named the device
    assert sum(n == "train_run" for n, _ in seen) == 2 * 3  # 2 networks x (real, real_x4, real+higfa), 1 seed
    boot = real_load(out / "guide-boot-higfa.safetensors")  # trained in the run, on the device, then saved
    assert boot.architecture == "test_resnet"


def test_a_gpu_run_has_cache_keys_of_its_own_and_a_cpu_run_keeps_todays():
    """key_part: nothing on the CPU (every key as before), {"device": "cuda"} on a GPU: downstream runs (both
    protocols), pretrained weights, tuned guides; the key names the device kind, not the GPU model."""
    import argparse

    from benchmarks.quality import device as on
    from benchmarks.quality import downstream, guides
    from higfa.world.catalog import make_world

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert on.key_part(cpu) == on.key_part("cpu") == on.key_part(None) == {}
    assert on.key_part(gpu) == on.key_part(torch.device("cuda", 1)) == {"device": "cuda"}
    ns = dict(alpha=0.4, downstream_arch="test_resnet", batch_size=64, models=None, world="tinybirds")
    old, with_cpu, with_gpu = (argparse.Namespace(**ns), argparse.Namespace(**ns, device=cpu),
                               argparse.Namespace(**ns, device=gpu))
    for key in (lambda a: downstream.run_key(a, 10, "real", None, 0, 625, 800),
                lambda a: downstream.converged_key(a, "tinybirds", "test_resnet", None, 10, "real", None, 0, 4800,
                                                   800)):
        assert key(old) == key(with_cpu) and "device" not in json.loads(key(old))
        assert json.loads(key(with_gpu)) == json.loads(key(old)) | {"device": "cuda"}
    world, arch = make_world("tinybirds"), protocol.ARCHITECTURES["resnet18-pre"]
    assert protocol.pretrain_key(arch, world) == protocol.pretrain_key(arch, world, device=cpu)
    assert protocol.pretrain_key(arch, world, device=gpu) == protocol.pretrain_key(arch, world) | {"device": "cuda"}
    assert protocol.pretrained_path(arch, world, Path("c")) != protocol.pretrained_path(arch, world, Path("c"),
                                                                                          device=gpu)
    settings = {"guide": "guidance", "tune": {"adversarial": 0.03}, "models": "shipped#x"}
    assert guides.tune_key(settings) == settings and guides.tune_key(settings | {"device": "cuda"})["device"] == "cuda"


def test_device_specs_and_worker_processes(monkeypatch):
    from benchmarks.quality import device as on

    assert on.resolve("cpu") == torch.device("cpu") and on.pool_context(torch.device("cpu")) is None  # fork, as before
    assert on.pool_context(torch.device("cuda")).get_start_method() == "spawn"  # CUDA cannot be used after fork
    with pytest.raises(ValueError, match="--device meta: the quality bench runs on cpu or cuda"):
        on.resolve("meta")
    with pytest.raises(ValueError, match="--device nonsense"):
        on.resolve("nonsense")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert on.resolve("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device on this machine; use --device cpu"):
        on.resolve("cuda")


def test_device_augment_draws_geometry_like_augment_and_noise_from_its_own_generator():
    """DeviceAugment: flips, shifts, scales, rotations and blur exactly as Augment (the same draws from the batch
    generator, which it leaves where Augment without noise leaves it); noise from its own seeded generator, of
    Augment's size, clamped to [0, 1]."""
    from benchmarks.quality import device as on

    x = torch.rand(6, 3, 16, 16)
    aug = protocol.DOWNSTREAM_AUGMENT
    plain = dataclasses.replace(aug, noise=0.0)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    geometric = plain(x, g1)
    noisy = on.DeviceAugment(aug, torch.device("cpu"), seed=7)(x, g2)
    assert torch.equal(g1.get_state(), g2.get_state())  # the batch stream as without noise
    diff = (noisy - geometric).abs()
    assert 0 < float(diff.max()) <= 6 * aug.noise and float(noisy.min()) >= 0 and float(noisy.max()) <= 1
    again = on.DeviceAugment(aug, torch.device("cpu"), seed=7)(x, torch.Generator().manual_seed(5))
    assert torch.equal(again, noisy)  # seeded
    assert torch.equal(on.DeviceAugment(plain, torch.device("cpu"), 7)(x, torch.Generator().manual_seed(5)), geometric)
    assert on.augment_for(aug, torch.device("cpu"), 0) is aug  # the CPU path is Augment itself
    arr = np.zeros((2, 4, 4, 3), np.uint8)
    assert on.to_device(arr, torch.device("cpu")) is arr



def test_ladders_measured_in_parallel_merge_into_one(tmp_path):
    """scripts/device_bench.sh measures the ladder in one process per (network, shots, seed), each its own file:
    `protocol.merge` (--merge) puts their runs together and summarises each block over the seeds it has."""
    head = {"what": "x", "test_images": 800, "batch_size": 64}

    def one(seed, accs):
        runs = {f"{n}/{seed}": {"steps": n, "seed": seed, "accuracy": a} for n, a in accs}
        return head | {"worlds": {"tinybirds": {"test_resnet": {"2-shot": {"runs": runs}}}}}

    files = []
    for seed, accs in ((0, [(300, 0.70), (600, 0.80)]), (1, [(300, 0.72), (600, 0.81), (1200, 0.9)])):
        files.append(tmp_path / f"test_resnet-2-{seed}.json")
        files[-1].write_text(json.dumps(one(seed, accs)))
    out = tmp_path / "merged.json"
    assert protocol.main(["--merge", *map(str, files), "--out", str(out)]) == 0
    block = json.loads(out.read_text())["worlds"]["tinybirds"]["test_resnet"]["2-shot"]
    assert len(block["runs"]) == 5 and block["seeds"] == [1]  # only seed 1 has every length (as `summarise` says)
    assert block["ladder"] == [[300, 0.72], [600, 0.81], [1200, 0.9]]
    files[1].write_text(json.dumps(one(1, [(300, 0.72), (600, 0.81)])))  # without its 1200 run: both seeds
    assert protocol.main(["--merge", *map(str, files), "--out", str(out)]) == 0
    block = json.loads(out.read_text())["worlds"]["tinybirds"]["test_resnet"]["2-shot"]
    assert block["seeds"] == [0, 1] and block["ladder"] == [[300, 0.71], [600, 0.805]]
    with pytest.raises(ValueError, match=r"other settings \(\['test_images'\]\)"):
        protocol.merge([one(0, [(300, 0.7)]), one(1, [(300, 0.7)]) | {"test_images": 50}])
