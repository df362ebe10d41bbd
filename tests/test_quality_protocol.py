"""The quality bench's converged downstream protocol (issue 24, benchmarks/quality/protocol.py): the plateau rule,
the headroom arithmetic, pretraining on species outside the test classes (disjoint, cached under its key), and the
per-world results layout with the protocol's blocks (tiny budgets: a few steps, a few images)."""

import json
from pathlib import Path

import pytest
import torch

from benchmarks.quality import protocol
from benchmarks.quality import run as quality
from benchmarks.quality.downstream import CONVERGED_STEPS, LADDER_CHOSEN
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
    """downstream.CONVERGED_STEPS holds what benchmarks/results/downstream_protocol.json's ladder chose."""
    measured = json.loads((ROOT / "benchmarks" / "results" / "downstream_protocol.json").read_text())
    chose = 0
    for arch, by_shots in measured["worlds"]["tinybirds"].items():
        for shots, block in by_shots.items():
            if block.get("choice") and block["choice"]["steps"] is not None:
                assert CONVERGED_STEPS[arch][int(shots.split("-")[0])] == block["choice"]["steps"], (arch, shots)
                assert (arch, int(shots.split("-")[0])) in LADDER_CHOSEN
                chose += 1
    assert chose >= 1 and len(LADDER_CHOSEN) == chose  # every other block is marked provisional


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
        assert (p["judge"], p["judge_species"] is None) == ((str(judge), False) if name == "judged" else (None, True))
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
