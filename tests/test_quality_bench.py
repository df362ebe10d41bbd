"""The quality bench (`python -m benchmarks.quality`) end to end on a tiny budget: the results file's keys, scorers,
caches, the report; and its cache keys, unchanged since the bench was one file."""

import argparse
import hashlib
import json
from pathlib import Path

import pytest

from benchmarks.quality import arms, guides
from benchmarks.quality import run as quality
from benchmarks.quality.report import NOTES_MARKER

ROOT = Path(__file__).resolve().parents[1]


def test_results_scorers_and_caches(tmp_path):
    out, results, doc = tmp_path / "out", tmp_path / "quality.json", tmp_path / "quality.md"
    args = ["--shots", "2", "--fidelity-shots", "1", "--steps", "3", "--presets", "cfg", "higfa",
            "--extra", "oracle-guided=higfa,classifier_scale=3,guide=oracle", "--downstream", "cfg", "higfa",
            "--downstream-shots", "2", "1", "--seeds", "0", "1", "--epochs", "2", "--test-per-class", "2",
            "--protocol", "saspa", "--threads", "1", "--out", str(out), "--results", str(results), "--doc", str(doc)]
    doc.write_text("old table\n" + NOTES_MARKER + "\nmy notes\n")
    assert quality.main(args) == 0
    r = json.loads(results.read_text())["worlds"]["tinybirds"]
    assert set(r["presets"]) == {"cfg", "higfa", "oracle-guided"}
    for name, p in r["presets"].items():
        for key in ("oracle_species", "oracle_family", "guide_species"):
            assert 0 <= p[key] <= 1, (name, key)
        # within-species diversity needs two images of a species: nan for the one-source-per-species arm
        assert 0 < p["pixel_diversity"] < 1 if p["n"] > 16 else p["pixel_diversity"] is None
        assert p["scored_by"] == ("scorer" if name == "oracle-guided" else "world oracle")
        assert p["fooling_gap"] == pytest.approx(p["guide_species"] - p["oracle_species"])
    assert r["presets"]["higfa"]["n"] == 64 and r["presets"]["oracle-guided"]["n"] == 32  # --fidelity-shots 1
    guided = r["presets"]["oracle-guided"]
    assert guided["guided_by"] == "oracle" and "world_oracle_species" not in guided  # it guided: no verdict
    assert "world_oracle_species" in r["presets"]["higfa"]
    assert r["presets"]["higfa"]["guided_sample_steps"] > 0 and r["presets"]["cfg"]["guided_sample_steps"] == 0
    assert r["scorer"]["architecture"] != "resnet10t" and 0 <= r["ceiling"]["vae_oracle"] <= 1
    assert 0 <= r["world"]["contour_f1"] <= 1
    assert r["world"]["kid_oracle"] == r["presets"]["higfa"]["kid_oracle"] and "kid_oracle_vae" in r["ceiling"]
    ten, five = r["downstream"]["saspa"], r["downstream"]["saspa"]["1-shot"]  # --shots at the top
    assert set(ten) == {"real", "real4", "real+cfg", "real+higfa", "paired", "shots", "1-shot"}
    assert set(five) == {"real", "real+cfg", "real+higfa", "paired"}
    assert len(ten["real+higfa"]["per_seed"]) == 2 and ten["real+higfa"]["steps"] == ten["real"]["steps"]
    assert ten["real4"]["steps"] == 2 * ten["real"]["steps"]  # the same epochs over twice the images
    assert five["real+higfa"]["synthetic_images"] == 32  # the 2 variants of the first image per species
    d = ten["paired"]["real+higfa - real"]
    assert d["per_seed"] == pytest.approx([a - b for a, b in zip(ten["real+higfa"]["per_seed"],
                                                                 ten["real"]["per_seed"])])
    text = doc.read_text()
    assert "independent scorer" in text and "KID ×1000" in text
    assert "| oracle-guided (higfa" in text and "old table" not in text
    assert text.rstrip().endswith("my notes")  # hand-written notes below the marker survive a rewrite

    # a rerun reuses every generation and every downstream run; a changed arm regenerates only itself
    cached = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert {"cfg.npz", "higfa.npz", "oracle-guided.npz", "downstream.json"} <= set(cached)
    assert quality.main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == cached
    assert json.loads(results.read_text())["worlds"]["tinybirds"]["downstream"] == r["downstream"]
    # --downstream-from-cache refills the downstream section from the cached runs only (here: all of them)
    assert quality.main(args + ["--downstream-from-cache", "--seeds", "0", "1", "2"]) == 0
    refilled = json.loads(results.read_text())["worlds"]["tinybirds"]
    assert refilled["presets"] == r["presets"] and refilled["downstream"]["saspa"]["real"]["seeds"] == [0, 1]
    # --only-downstream fills the run cache and leaves the report alone
    before = results.read_bytes()
    assert quality.main(args + ["--only-downstream"]) == 0
    assert results.read_bytes() == before
    changed = [a.replace("classifier_scale=3", "classifier_scale=5") for a in args]
    assert quality.main(changed) == 0
    assert (out / "cfg.npz").stat().st_mtime_ns == cached["cfg.npz"]
    assert (out / "oracle-guided.npz").stat().st_mtime_ns != cached["oracle-guided.npz"]
    assert json.loads(results.read_text())["worlds"]["tinybirds"]["downstream"] == r["downstream"]  # arms unchanged
    # --jobs 2: the downstream runs in worker processes give the same numbers (each run is seeded)
    (out / "downstream.json").unlink()
    assert quality.main(changed + ["--jobs", "2"]) == 0
    assert json.loads(results.read_text())["worlds"]["tinybirds"]["downstream"] == r["downstream"]


def test_bad_arms_name_the_option():
    with pytest.raises(ValueError, match="--sweep 'classifier_scale'"):
        arms.parse_sweeps(["classifier_scale"])
    with pytest.raises(ValueError, match="--sweep 'no_such_field=1'"):
        arms.parse_sweeps(["no_such_field=1,2"])
    with pytest.raises(ValueError, match="--extra 'no_such_field=1'"):
        arms.parse_extra("x=higfa,no_such_field=1", {})
    # Schedule's one text parser: a bool field from 1/0 as the route reads it (the bench read "1" as False)
    assert arms.parse_extra("x=higfa,modulate=0,gating=1", {}).overrides == {"modulate": False, "gating": True}
    with pytest.raises(ValueError, match="--extra 'x=nopreset'.*higfa-tuned"):
        arms.parse_extra("x=nopreset", {})
    assert arms.parse_extra("t=higfa-tuned,guide=boot:higfa,tune=0.03", {}).preset == "higfa-tuned"  # any preset
    arm = arms.parse_extra("v=higfa,classifier_scale=2,guide=oracle", {"stage_boundary": 0.5})
    assert (arm.preset, arm.guide) == ("higfa", "oracle")
    assert arm.overrides == {"stage_boundary": 0.5, "classifier_scale": 2.0}
    arm = arms.parse_extra("f=higfa-robust,filter=x.safetensors,filter_threshold=0.7", {})
    assert (arm.preset, arm.filter, arm.filter_threshold, arm.overrides) == ("higfa-robust", "x.safetensors", 0.7, {})
    with pytest.raises(ValueError, match="must be a classifier that did not guide"):
        arms.parse_extra("f=higfa,guide=x.safetensors,filter=x.safetensors", {})
    shipped = ROOT / "higfa" / "world" / "assets" / "guidance.safetensors"
    with pytest.raises(ValueError, match="must be a classifier that did not guide"):  # the default guide, by path
        arms.parse_extra(f"f=higfa,filter={shipped}", {})
    assert arms.parse_extra(f"f=higfa,guide=boot:higfa,filter={shipped}", {}).filter == str(shipped)
    with pytest.raises(ValueError, match="judge="):
        arms.parse_extra(f"j=higfa-judged,judge={shipped}", {})  # the shipped guide cannot judge itself
    tuned = arms.parse_extra(f"j=higfa-judged,tune=0.031,judge={shipped}", {})  # ... but may judge its PGD-tuned copy
    assert (tuned.judge, tuned.guide_key) == (str(shipped), "guidance+tune=0.031")
    with pytest.raises(ValueError, match="not the arm itself"):
        arms.parse_extra("b=higfa,guide=boot:b", {})


def test_a_filtered_arm_keeps_only_what_its_judge_accepts(tmp_path):
    """filter=PATH: a classifier that did not guide scores the arm's images; downstream uses only those it
    accepts, and the arm's record says how many and how right they are (by the world oracle)."""
    judge = ROOT / "higfa" / "world" / "assets" / "guidance_robust.safetensors"
    results = tmp_path / "quality.json"
    args = ["--shots", "2", "--steps", "3", "--presets", "higfa", "--extra",
            f"judged=higfa,filter={judge},filter_threshold=0.2", "--downstream", "judged", "--downstream-shots", "2",
            "--seeds", "0", "--epochs", "1", "--test-per-class", "1", "--protocol", "saspa", "--threads", "1",
            "--out", str(tmp_path / "o"),
            "--results", str(results), "--doc", ""]
    assert quality.main(args) == 0
    r = json.loads(results.read_text())["worlds"]["tinybirds"]
    f = r["presets"]["judged"]["filter"]
    assert f["threshold"] == 0.2 and 0 <= f["kept"] <= 1 and "filter" not in r["presets"]["higfa"]
    if f["kept"] == 1:  # nothing dropped: the kept images' verdicts are the arm's own
        a = r["presets"]["judged"]
        assert (f["oracle_species_kept"], f["oracle_family_kept"], f["fooling_gap_kept"]) == (
            a["oracle_species"], a["oracle_family"], a["fooling_gap"])
    elif f["kept"] > 0:
        assert f["fooling_gap_kept"] == f["guide_species_kept"] - f["oracle_species_kept"]
        assert 0 <= f["oracle_family_kept"] <= 1 and f["pixel_diversity_kept"] >= 0
    assert r["presets"]["judged"]["oracle_species"] == r["presets"]["higfa"]["oracle_species"]  # the same images
    # generated once: the filter acts after generation, so the filtered arm takes its twin's images
    assert (tmp_path / "o" / "higfa.npz").is_file() and not (tmp_path / "o" / "judged.npz").exists()
    assert r["downstream"]["saspa"]["real+judged"]["synthetic_images"] == round(f["kept"] * 64)  # 2 per source


def _one_source_run(extra: str | None, tmp_path: Path) -> tuple[list[str], Path, dict]:
    """Runs the bench on `higfa` (+ one extra arm), one source per species, 2 steps, no downstream:
    (its arguments, its cache folder, its presets section)."""
    out, results = tmp_path / "o", tmp_path / "quality.json"
    args = ["--shots", "1", "--steps", "2", "--presets", "higfa", *(["--extra", extra] if extra else []),
            "--downstream", "--test-per-class", "1", "--threads", "1", "--out", str(out), "--results", str(results),
            "--doc", ""]
    assert quality.main(args) == 0
    return args, out, json.loads(results.read_text())["worlds"]["tinybirds"]["presets"]


def test_a_boot_arm_trains_its_guide_on_the_first_rounds_images(tmp_path, monkeypatch):
    """guide=boot:ARM: a second-round guide trained (few-shot images + ARM's variants, SaSPA weights) inside the
    run, cached under what ARM's images were; it guides and judges its own arm, and retrains when ARM changes."""
    monkeypatch.setitem(guides.BOOT, "steps", 3)
    args, out, r = _one_source_run("second=higfa,guide=boot:higfa", tmp_path)
    assert r["second"]["guided_by"] == "boot:higfa" and 0 <= r["second"]["guide_species"] <= 1
    guide = out / "guide-boot-higfa.safetensors"  # one per first round: arms with the same boot:ARM share it
    key = json.loads(guide.with_suffix(".key.json").read_text())
    assert key["boot"] == "higfa" and key["recipe"]["steps"] == 3 and key["first_round"]["preset"] == "higfa"
    stamp = guide.stat().st_mtime_ns
    assert quality.main(args) == 0 and guide.stat().st_mtime_ns == stamp  # reused
    # the first round changes (a schedule field of every arm): so does its guide
    assert quality.main(args + ["--set", "classifier_scale=3"]) == 0 and guide.stat().st_mtime_ns != stamp
    with pytest.raises(ValueError, match="needs the arm 'cfg' earlier"):
        quality.main([a.replace("boot:higfa", "boot:cfg") for a in args])


def test_a_tuned_arm_guides_with_its_guide_tuned_by_tune_classifier(tmp_path, monkeypatch):
    """tune=EPS: the arm's guide (here a second-round guide) is first tuned by `higfa tune-classifier
    --adversarial EPS` on the few-shot images; the tuned one guides and judges the arm, is cached beside its
    source, and untuned arms keep their cache keys."""
    from higfa.classifier import load_classifier

    monkeypatch.setitem(guides.BOOT, "steps", 3)
    monkeypatch.setitem(guides.TUNE, "views", 1)
    monkeypatch.setitem(guides.TUNE, "epochs", 1)
    args, out, r = _one_source_run("second=higfa,guide=boot:higfa,tune=0.03", tmp_path)
    assert r["second"]["guided_by"] == "boot:higfa+tune=0.03" and 0 <= r["second"]["guide_species"] <= 1
    tuned = out / "guide-boot-higfa-tune0.03.safetensors"
    prov = load_classifier(tuned).provenance
    assert prov["command"] == "tune-classifier" and prov["adversarial"] == 0.03 and prov["views"] == 1
    assert prov["tuned_from"] == str(out / "guide-boot-higfa.safetensors")
    stamp = tuned.stat().st_mtime_ns
    assert quality.main(args) == 0 and tuned.stat().st_mtime_ns == stamp  # reused
    settings = arms.gen_settings
    ns = argparse.Namespace(shots=10, per_source=1, steps=30, batch=32, seed=0, models=None)
    assert "tune" not in settings(ns, arms.parse_extra("a=higfa", {}))  # untuned arms: keys unchanged
    assert settings(ns, arms.parse_extra("a=higfa,tune=0", {}))["tune"]["adversarial"] == 0.0
    for bad, match in (("t=higfa,tune=-1", "must be a PGD ε >= 0"), ("t=higfa,tune=x", "must be a PGD ε >= 0"),
                       ("t=higfa,guide=oracle,tune=0.03", "diagnosis only")):
        with pytest.raises(ValueError, match=match):
            arms.parse_extra(bad, {})


def test_an_ensemble_arm_guides_with_its_members_as_one(tmp_path):
    """ensemble=A+B: the guide and the named classifier files push as one (ClassifierEnsemble, as `higfa augment
    --ensemble`); the arm's guide verdict is the ensemble's, its images are keyed by the members' weights (arms
    without it keep their keys), and a member may neither be the guide nor judge or filter the arm."""
    import numpy as np

    from higfa.classifier import ClassifierEnsemble, load_classifier
    from higfa.training import predict

    folder = ROOT / "higfa" / "world" / "assets"
    member, shipped = folder / "guidance_robust.safetensors", folder / "guidance.safetensors"
    args, out, r = _one_source_run(f"ens=higfa-robust,ensemble={member}", tmp_path)
    # reports name files inside the repository from its root (no machine's folders in results files)
    assert r["ens"]["guided_by"] == "guidance+ensemble=higfa/world/assets/guidance_robust.safetensors"
    saved = np.load(out / "ens.npz")
    ens = ClassifierEnsemble([load_classifier(shipped).float(), load_classifier(member).float()])
    right = predict(ens, saved["images"]).argmax(1).numpy() == saved["targets"]
    assert r["ens"]["guide_species"] == pytest.approx(float(right.mean()))
    meta = json.loads(str(saved["meta"]))["settings"]
    assert meta["ensemble"] == [f"{member}#{hashlib.sha256(member.read_bytes()).hexdigest()[:16]}"]
    ns = argparse.Namespace(shots=10, per_source=1, steps=30, batch=32, seed=0, models=None)
    assert "ensemble" not in arms.gen_settings(ns, arms.parse_extra("a=higfa", {}))
    for bad, match in ((f"e=higfa,ensemble={shipped}", "none of them the guide"),
                       (f"e=higfa,ensemble={member}+{member}", "each once"),
                       (f"e=higfa,guide=oracle,ensemble={member}", "none of them the guide or the oracle"),
                       (f"e=higfa-judged,ensemble={member},judge={member}", "judge=.* guides in the ensemble"),
                       (f"e=higfa,ensemble={member},filter={member}", "filter=.* guides in the ensemble"),
                       ("e=higfa,ensemble=probe:no_such", "probe:no_such: not one of the judge probe's")):
        with pytest.raises(ValueError, match=match):
            arms.parse_extra(bad, {})


def test_probe_classifiers_are_the_judge_probes_files_made_when_missing(tmp_path, monkeypatch):
    """probe:NAME names a classifier the judge probe trains (benchmarks.judge_probe.TRAINED) for the run's world:
    its file in the probe's folder; `build_arms` trains the missing ones before their digests key any image."""
    from benchmarks import judge_probe

    monkeypatch.setattr(judge_probe, "TRAINED_DIR", tmp_path / "probe")
    arm = arms.parse_extra("e=higfa-judged,ensemble=probe:fewshot_efficientnet,judge=probe:fewshot_resnet_seed21",
                           {}, world="finebirds")
    assert arm.ensemble == (str(tmp_path / "probe" / "finebirds" / "fewshot_efficientnet.safetensors"),)
    assert arm.judge == str(tmp_path / "probe" / "finebirds" / "fewshot_resnet_seed21.safetensors")
    # reports name them as they were asked for (quality.json's guided_by and judge), the cache keys by full path
    assert arm.guide_label == "guidance+ensemble=probe:fewshot_efficientnet"
    assert arms.shown(arm.judge) == "probe:fewshot_resnet_seed21"
    assert arm.record() == {"name": "e", "preset": "higfa-judged", "overrides": {}, "guide": "guidance",
                            "filter": None, "filter_threshold": 0.5, "tune": None,
                            "judge": "probe:fewshot_resnet_seed21", "ensemble": ["probe:fewshot_efficientnet"]}
    assert arms.shown(str(tmp_path / "elsewhere.safetensors")) == str(tmp_path / "elsewhere.safetensors")
    assert str(tmp_path) in arm.guide_key
    made = []
    monkeypatch.setattr(judge_probe, "trained_file", lambda name, world: made.append((name, world)))
    arms.make_probe_classifiers([arm], "finebirds")
    assert made == [("fewshot_resnet_seed21", "finebirds"), ("fewshot_efficientnet", "finebirds")]


@pytest.mark.parametrize("world", ["tinybirds", "finebirds"])
def test_the_makefiles_arms_parse_for_each_world(world, tmp_path, monkeypatch):
    """`make bench-quality WORLD=...`'s --extra arms and --downstream names, read from the Makefile as
    scripts/device_bench.sh reads them: every arm parses, every downstream name is an arm, the probe classifiers
    they name are the judge probe's for that world (made when missing: here recorded, not trained)."""
    import subprocess

    from benchmarks import judge_probe

    def var(name: str) -> list[str]:
        got = subprocess.run(["make", "-s", "--no-print-directory", "--eval=print-%: ; @echo $($*)",
                              f"print-{name}", f"WORLD={world}"], cwd=ROOT, capture_output=True, text=True)
        assert got.returncode == 0, got.stderr
        return got.stdout.split()

    made = []
    monkeypatch.setattr(judge_probe, "trained_file", lambda name, w: made.append((name, w)))
    monkeypatch.setattr(judge_probe, "TRAINED_DIR", tmp_path)  # nothing there: every probe classifier is "missing"
    monkeypatch.chdir(ROOT)
    args = argparse.Namespace(set=[], presets=list(arms.PRESETS), extra=var(f"QUALITY_ARMS_{world}"), sweep=[],
                              downstream=var(f"QUALITY_DOWNSTREAM_{world}"), world=world)
    built = {a.name: a for a in arms.build_arms(args, ROOT / "higfa" / "world" / ("assets" if world == "tinybirds"
                                                                                    else "assets_finebirds"))}
    ens = built["higfa-judged-ensemble"]
    assert ens.preset == "higfa-judged" and len(ens.ensemble) == 2 and ens.judge.endswith("fewshot_resnet18_pre"
                                                                                           ".safetensors")
    assert built["higfa-robust-ensemble"].ensemble == ens.ensemble
    assert sorted(set(made)) == [(n, world) for n in ("fewshot_efficientnet", "fewshot_resnet18_pre",
                                                       "fewshot_resnet_seed21")]


def test_an_arm_another_process_cached_meanwhile_is_not_generated_again(tmp_path, monkeypatch):
    """Two processes may fill one cache (a --no-downstream prefill beside `make bench-quality`): an arm found stale
    at the start but cached by the time the run reaches it is loaded, not generated again."""
    args, out, _ = _one_source_run(None, tmp_path)
    seen, cache_ok = set(), arms.cache_ok

    def stale_at_start(cache, settings):  # the first look misses it, as if the other process were still writing
        if cache in seen:
            return cache_ok(cache, settings)
        seen.add(cache)
        return False

    def generate(*a, **k):
        raise AssertionError("generated again")

    monkeypatch.setattr(quality, "cache_ok", stale_at_start)
    monkeypatch.setattr(quality, "generate", generate)
    assert quality.main(args) == 0 and seen == {out / "higfa.npz"}


def test_cached_images_are_keyed_by_the_models_weights(tmp_path):
    """Retrained weights (`make train-world`) must never reuse the old weights' cached images or runs."""
    import argparse
    import shutil

    from higfa.world.birds import ASSETS

    folder = tmp_path / "world"
    shutil.copytree(ASSETS, folder)
    args = argparse.Namespace(shots=10, per_source=1, steps=30, batch=32, seed=0, models=folder)
    arm = arms.parse_extra("a=higfa", {})
    before = arms.gen_settings(args, arm)
    (folder / "training.json").write_text("{}")  # metadata only: same key
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "diffusion.pt").write_bytes(b"resumable state")  # training state only: same key
    arms.models_digest.cache_clear()
    assert arms.gen_settings(args, arm) == before
    from higfa.world.architecture import TINY_DECODER_FOLDER
    tiny = next((folder / TINY_DECODER_FOLDER).glob("*.safetensors"))
    tiny.write_bytes(tiny.read_bytes()[:-2] + b"\x00\x01")  # the tiny decoder guides no bench arm
    arms.models_digest.cache_clear()
    assert arms.gen_settings(args, arm) == before and arms.BENCH_DECODER == "vae"
    unet = next((folder / "unet").glob("*.safetensors"))
    unet.write_bytes(unet.read_bytes()[:-2] + b"\x00\x01")  # one weight changed
    arms.models_digest.cache_clear()
    assert arms.gen_settings(args, arm)["models"] != before["models"]


# `make bench-quality`'s arms (its command line) and the sha256 of every cache key the bench computes for them: each
# arm's generation settings, the second-round and tuned guides' keys, the 125 downstream runs' keys, as the bench
# computed them when it was one file (benchmarks/quality.py at e383034). A refactor that changed one would make the
# next run regenerate, or retrain, what its cache holds. The value changes, rightly, with the shipped world's weights
# (models_digest) or the bench's recipes (guides.BOOT, guides.TUNE, the downstream protocol).
MAKE_BENCH_QUALITY_EXTRA = [
    "higfa-robust-pgd=higfa-robust,guide=higfa/world/assets/guidance_robust.safetensors",
    "higfa-robust-pgd16=higfa-robust,views=16,guide=higfa/world/assets/guidance_robust.safetensors",
    "higfa-robust-filtered=higfa-robust,filter=higfa/world/assets/guidance_robust.safetensors",
    "higfa-oracle=higfa-robust,guide=oracle", "higfa-boot=higfa,guide=boot:higfa",
    "higfa-boot-pgd=higfa-robust,guide=boot:higfa,tune=0.031",
    "higfa-tuned-boot-pgd=higfa-tuned,guide=boot:higfa,tune=0.031",
    "higfa-tuned-boot-pgd-filtered=higfa-tuned,guide=boot:higfa,tune=0.031,"
    "filter=higfa/world/assets/guidance.safetensors",
    "higfa-tuned-pgd=higfa-tuned,guide=higfa/world/assets/guidance_robust.safetensors"]
MAKE_BENCH_QUALITY_DOWNSTREAM = ["cfg", "higfa", "higfa-robust", "higfa-robust-pgd", "higfa-robust-filtered",
                                 "higfa-oracle", "higfa-boot", "higfa-boot-pgd", "higfa-tuned-boot-pgd",
                                 "higfa-tuned-boot-pgd-filtered", "higfa-tuned-pgd"]
MAKE_BENCH_QUALITY_KEYS = "dcf94b8e263cbef01a8e872e9f15ba44c4140f61507831ed8538dcc530f658bb"


def test_make_bench_quality_cache_keys_are_those_of_the_one_file_bench(tmp_path, monkeypatch):
    """Every key `make bench-quality` caches under, captured from a run that generates, trains and tunes nothing
    (blank images, the shipped guide stands in for the trained ones, no downstream training)."""
    import hashlib

    import numpy as np

    from benchmarks.quality import downstream

    captured = {"boot": [], "tune": [], "downstream": [], "settings": {}}

    def blank_images(models, arm, guide, sources, which, per_source, steps, batch, seed, bar):
        src = np.repeat(np.asarray(which), per_source)
        return {"images": np.zeros((len(src), 64, 64, 3), np.uint8), "contours": np.zeros((len(src), 64, 64), np.uint8),
                "targets": np.asarray(sources.labels)[src], "source": src, "seconds": 0.0,
                "guided_sample_steps": 0, "gated_sample_steps": 0}

    def boot(models, real, first_round, alpha, cache, key):
        captured["boot"].append(key)
        return models.guidance

    def tuned(model, source, eps, cache, key):
        captured["tune"].append([model, Path(source).name, eps, Path(cache).name, key])

    def no_training(todo, test, world, args):
        captured["downstream"] += [task[0] for task in todo]
        return iter(())

    def settings_spy(args, world, generated, settings, test, bar):
        captured["settings"] = json.loads(json.dumps(settings))
        return run_downstream(args, world, generated, settings, test, bar)

    run_downstream = quality.run_downstream
    monkeypatch.setattr(quality, "generate", blank_images)
    monkeypatch.setattr(quality, "boot_guide", boot)
    monkeypatch.setattr(quality, "tuned_guide", tuned)
    monkeypatch.setattr(quality, "run_downstream", settings_spy)
    monkeypatch.setattr(downstream, "run_all", no_training)
    monkeypatch.chdir(ROOT)  # the command line's relative paths, as `make` gives them
    out = tmp_path / "out"
    # the old protocol, as `make bench-quality` ran it before issue 24 (the converged protocol's keys are new ones)
    assert quality.main(["--threads", "1", "--protocol", "saspa", "--extra", *MAKE_BENCH_QUALITY_EXTRA, "--downstream",
                         *MAKE_BENCH_QUALITY_DOWNSTREAM, "--only-downstream", "--out", str(out),
                         "--results", str(tmp_path / "q.json"), "--doc", ""]) == 0
    settings = captured["settings"]
    assert len(settings) == 14 and len(captured["boot"]) == 1 and len(captured["tune"]) == 1
    assert len(captured["downstream"]) == 125  # 5 seeds x (10-shot: real, real20, 11 arms; 5-shot: real, 11 arms)
    assert settings["higfa"]["models"].startswith("shipped#") and settings["higfa"]["sources"] == 160
    assert settings["higfa-tuned-boot-pgd-filtered"]["guide"]["first_round"] == settings["higfa"]
    keys = {"settings": settings, "boot": captured["boot"], "tune": captured["tune"],
            "downstream": sorted(captured["downstream"])}
    assert hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest() == MAKE_BENCH_QUALITY_KEYS


def test_contours_are_computed_once_per_item_and_equal_the_worlds():
    """generate's contour cache: the same [B,3,H,W] tensor as `WorldModels.contours` for any mix of items seen
    before and new ones (the contour depends on the edge detector, the seed and the source image alone)."""
    import torch

    from higfa.contour import ContourTransform
    from higfa.world.models import load_world

    models = load_world()
    images = models.world.split("fewshot", 1).images[:5]
    quality._CONTOURS.clear()
    first = quality.contours_of(models, images[:3], [7, 8, 9])
    assert torch.equal(first, models.contours(images[:3], [7, 8, 9], ContourTransform()))
    assert len(quality._CONTOURS) == 3
    mixed = quality.contours_of(models, images[[4, 1, 1]], [9, 8, 10])  # new image, cached item, new seed
    assert torch.equal(mixed, models.contours(images[[4, 1, 1]], [9, 8, 10], ContourTransform()))
    assert len(quality._CONTOURS) == 5


def test_paired_fidelity_compares_arms_image_by_image(tmp_path):
    """`python -m benchmarks.quality.paired_fidelity`: the world oracle's verdicts on two arms' cached images, paired
    per image; an arm compared with its own images differs by exactly 0, one with other sources or no cache refuses."""
    import numpy as np

    from benchmarks.quality import paired_fidelity
    from higfa.classifier import load_classifier
    from higfa.world.catalog import assets

    oracle = load_classifier(assets() / "oracle.safetensors").float().eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12, 64, 64, 3), dtype=np.uint8)
    targets, source = np.arange(12) % 4, np.arange(12) // 2
    np.savez(tmp_path / "a.npz", images=images, targets=targets, source=source)
    np.savez(tmp_path / "b.npz", images=images[::-1].copy(), targets=targets, source=source)
    np.savez(tmp_path / "same.npz", images=images, targets=targets, source=source)
    np.savez(tmp_path / "other.npz", images=images, targets=targets, source=source[::-1].copy())
    out = paired_fidelity.compare(tmp_path, ["a", "same", "b"], oracle, resamples=200)
    assert out["a - same"]["difference"] == 0 and out["a - same"]["ci95"] == [0, 0]
    right = paired_fidelity.oracle_right(images, targets, oracle)
    right_b = paired_fidelity.oracle_right(images[::-1].copy(), targets, oracle)
    assert out["a - b"]["difference"] == pytest.approx(round(float(right.mean() - right_b.mean()), 4))
    with pytest.raises(SystemExit, match="other sources or targets"):
        paired_fidelity.compare(tmp_path, ["a", "other"], oracle)
    with pytest.raises(SystemExit, match="missing: no cached images"):
        paired_fidelity.compare(tmp_path, ["a", "missing"], oracle)
    assert arms.cache_folder("finebirds").name == "bench_quality_finebirds"
    assert arms.cache_folder().name == "bench_quality"
