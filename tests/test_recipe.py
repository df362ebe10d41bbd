"""`higfa augment --judge` and `--rounds 2` (higfa/jobs/recipe.py) with the world's shipped tiny models
(`--model builtin`) and tiny steps: the two-round layout end to end, resume after interruption byte-identical,
a changed recipe or stage refused, one round with a judge, and the options' errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from classifier_support import species_folder  # noqa: E402
from higfa.classifier import load_classifier  # noqa: E402
from higfa.jobs.cli import main  # noqa: E402
from higfa.world.birds import ASSETS  # noqa: E402

SPECIES = ["red-crowned finch", "plain jay"]
TINY = ["--model", "builtin", "--steps", "3", "--variants", "1", "--threads", "1", "--no-progress", "--quiet"]
ROUND2 = ["--rounds", "2", "--guide-steps", "2", "--tune-epochs", "1", "--tune-views", "1"]


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return species_folder(tmp_path_factory.mktemp("recipe") / "train", SPECIES, per_class=2)


def outputs(out: Path) -> dict[str, str]:
    """sha256 of every image and classifier weights file under `out` (what the recipe produces)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.suffix in (".png", ".safetensors")}


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def recipe(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "out"
    assert main(["augment", "--data", str(data), "--out", str(out), *TINY, *ROUND2, "--round2-filter", "0.5"]) == 0
    return out


def test_two_rounds_in_one_command(recipe):
    out = recipe
    assert len(list((out / "round1" / "images").rglob("*.png"))) == 4
    # the intermediate classifiers in the sidecar format, each with what made it
    guide = load_classifier(out / "guides" / "round2_guide.safetensors")
    tuned = load_classifier(out / "guides" / "round2_tuned.safetensors")
    first = load_classifier(ASSETS / "guidance.safetensors")
    assert guide.architecture == tuned.architecture == first.architecture
    assert guide.class_names == first.class_names
    assert guide.provenance["synthetic_images"] == 4 and guide.provenance["steps"] == 2
    assert tuned.provenance["tuned_from"] == str(out / "guides" / "round2_guide.safetensors")
    assert tuned.provenance["adversarial"] == 0.031
    assert any(not torch.equal(a, b) for a, b in zip(guide.state_dict().values(), tuned.state_dict().values()))
    # round 2: guided by the tuned guide, judged by the first guide, higfa-judged
    fp = json.loads((out / "round2" / "run.json").read_text())["fingerprint"]
    assert fp["classifier"] == str((out / "guides" / "round2_tuned.safetensors").resolve())
    assert fp["judge"] == str((ASSETS / "guidance.safetensors").resolve())
    assert fp["schedule"]["preset"] == "higfa-judged" and fp["schedule"]["modulate"] and fp["schedule"]["gating"]
    rows = manifest(out / "round2")
    assert len(rows) == 4 and all(r["schedule"] == "higfa-judged" for r in rows)
    assert all(r["trace_judge_confidence"] is not None for r in rows)
    # --round2-filter: the first guide's p < 0.5 sets an image aside, inspectable, outside the ImageFolder
    for r in rows:
        assert (out / "round2" / r["output"]).is_file()
        assert (r["status"] == "dropped") == (r["confidence"] < 0.5) == r["output"].startswith("dropped/")
    summary = json.loads((out / "round2" / "summary.json").read_text())
    assert summary["dropped"] == sum(r["status"] == "dropped" for r in rows)
    assert "trace_judge_confidence" not in manifest(out / "round1")[0]  # round 1 is today's augment


def test_resume_after_interruption_is_byte_identical(recipe, data, tmp_path, monkeypatch):
    import higfa.jobs.item_sampler as item_sampler
    import higfa.jobs.recipe as recipe_module

    out = tmp_path / "out"
    args = ["augment", "--data", str(data), "--out", str(out), *TINY, *ROUND2, "--round2-filter", "0.5"]

    def stop(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # stopped after the guide was trained, before its tuning
        m.setattr(recipe_module, "tune_stage", stop)
        assert main(args) == 130
    assert (out / "guides" / "round2_guide.safetensors").is_file()
    assert not (out / "guides" / "round2_tuned.safetensors").exists()

    real_run, calls = item_sampler.ItemSampler.run, {"n": 0}

    def stop_in_round2(self, group):
        if self.sampling_judge is not None:
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
        return real_run(self, group)

    import higfa.jobs.second_round as second_round

    real_train, trained = second_round.train_on_round, {"n": 0}

    def counting(*a, **k):
        trained["n"] += 1
        return real_train(*a, **k)

    monkeypatch.setattr(second_round, "train_on_round", counting)
    with monkeypatch.context() as m:  # stopped in round 2, after two images
        m.setattr(item_sampler.ItemSampler, "run", stop_in_round2)
        assert main(args) == 130
    assert len(manifest(out / "round2")) == 2
    assert main(args) == 0
    assert outputs(out) == outputs(recipe)
    assert trained["n"] == 0  # the trained guide was cached, never trained again


def test_a_changed_recipe_or_stage_is_refused(recipe, data, capsys):
    out = recipe
    args = ["augment", "--data", str(data), "--out", str(out), *TINY, *ROUND2, "--round2-filter", "0.5"]
    before = outputs(out)
    assert main([*args[:-2], "--round2-filter", "0.6"]) == 2
    err = capsys.readouterr().err
    assert "holds a different two-round run" in err and "filter: 0.5 -> 0.6" in err and "--overwrite" in err
    key = out / "guides" / "round2_tuned.key.json"
    saved = key.read_text()
    key.write_text(json.dumps({"guide": "another"}))
    try:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "round2_tuned.safetensors was made from other inputs" in err and "--overwrite" in err
    finally:
        key.write_text(saved)
    assert outputs(out) == before


def test_one_round_with_a_judge(data, tmp_path):
    out = tmp_path / "judged"
    judge = ASSETS / "guidance_robust.safetensors"
    assert main(["augment", "--data", str(data), "--out", str(out), *TINY, "--preset", "higfa-judged", "--judge",
                 str(judge), "--traces"]) == 0
    fp = json.loads((out / "run.json").read_text())["fingerprint"]
    assert fp["judge"] == str(judge.resolve())
    for r in manifest(out):
        trace = json.loads((out / r["trace"]).read_text())
        assert trace["judge"] == "guidance_robust.safetensors"
        judged = [s for s in trace["steps"] if s.get("judge_confidence") is not None]
        assert judged and r["trace_judge_confidence"] == judged[-1]["judge_confidence"][0]
    # without --judge: no judge in the run's fingerprint, the manifest or the traces (the outputs as before)
    plain = tmp_path / "plain"
    assert main(["augment", "--data", str(data), "--out", str(plain), *TINY, "--preset", "higfa-judged",
                 "--traces"]) == 0
    assert "judge" not in json.loads((plain / "run.json").read_text())["fingerprint"]
    row = manifest(plain)[0]
    assert "trace_judge_confidence" not in row
    assert json.loads((plain / row["trace"]).read_text()).get("judge") is None


def test_one_round_with_an_ensemble_guide(data, tmp_path):
    """--ensemble: the world's guide and its PGD-tuned copy push as one; the run's fingerprint names the member,
    and the manifest's confidence is the ensemble's (not the guide's alone); without it, as before."""
    import numpy as np

    from higfa.classifier import ClassifierEnsemble
    from higfa.training import predict

    member = ASSETS / "guidance_robust.safetensors"
    out, plain = tmp_path / "ensemble", tmp_path / "plain"
    for folder, extra in ((out, ["--ensemble", str(member)]), (plain, [])):
        assert main(["augment", "--data", str(data), "--out", str(folder), *TINY, "--preset", "higfa-robust",
                     *extra]) == 0
    assert json.loads((out / "run.json").read_text())["fingerprint"]["ensemble"] == [str(member.resolve())]
    assert "ensemble" not in json.loads((plain / "run.json").read_text())["fingerprint"]
    rows, rows_plain = manifest(out), manifest(plain)
    assert [r["output"] for r in rows] == [r["output"] for r in rows_plain]
    assert any((out / r["output"]).read_bytes() != (plain / r["output"]).read_bytes() for r in rows)  # another push
    from PIL import Image

    ens = ClassifierEnsemble([load_classifier(ASSETS / "guidance.safetensors"), load_classifier(member)])
    img = np.stack([np.asarray(Image.open(out / r["output"]).convert("RGB")) for r in rows])
    p = predict(ens, img)[torch.arange(len(rows)), torch.tensor([ens.resolve(r["label"]) for r in rows])]
    assert [float(r["confidence"]) for r in rows] == pytest.approx(p.tolist(), abs=1e-3)


def test_an_ensemble_guide_judged_by_a_classifier_in_none_of_its_members(data, tmp_path):
    """docs/classifiers.md's command: --classifier + --ensemble guide together under higfa-judged, --judge (not a
    member) drives the ramp and the gate; the trace names the judge, its confidence is the judge's (not the
    guide's: the traces record both)."""
    out = tmp_path / "ens_judged"
    member, judge = ASSETS / "guidance_robust.safetensors", ASSETS / "oracle.safetensors"
    assert main(["augment", "--data", str(data), "--out", str(out), *TINY, "--preset", "higfa-judged",
                 "--ensemble", str(member), "--judge", str(judge), "--traces"]) == 0
    fp = json.loads((out / "run.json").read_text())["fingerprint"]
    assert fp["ensemble"] == [str(member.resolve())] and fp["judge"] == str(judge.resolve())
    for r in manifest(out):
        trace = json.loads((out / r["trace"]).read_text())
        assert trace["judge"] == "oracle.safetensors"
        judged = [s for s in trace["steps"] if s.get("judge_confidence") is not None]
        assert judged and r["trace_judge_confidence"] == judged[-1]["judge_confidence"][0]
        assert any(s["judge_confidence"] != s["confidence"] for s in judged)  # two classifiers, two readings


@pytest.mark.parametrize("extra, message", [
    (["--ensemble", str(ASSETS / "guidance_robust.safetensors"), "--preset", "cfg"],
     "its members guide together with --classifier"),
    (["--ensemble", str(ASSETS / "guidance_robust.safetensors"), "--judge", str(ASSETS / "guidance_robust.safetensors"),
      "--preset", "higfa-judged"], "it also guides (--classifier or --ensemble)"),
    (["--rounds", "2", "--ensemble", str(ASSETS / "guidance_robust.safetensors")], "--ensemble with --rounds 2"),
    (["--judge", str(ASSETS / "guidance_robust.safetensors"), "--preset", "cfg"], "nothing to judge"),
    (["--round2-filter", "0.5"], "--round2-filter is an option of the second round: add --rounds 2"),
    (["--rounds", "2", "--round2-filter", "1.5"], "--round2-filter 1.5"),
    (["--rounds", "2", "--round2-preset", "cfg"], "--round2-preset cfg"),
    (["--rounds", "2", "--min-confidence", "0.5"], "--round2-filter"),
    (["--rounds", "2", "--judge", str(ASSETS / "guidance_robust.safetensors")], "round 2's judge is your first"),
])
def test_bad_options_are_one_line_errors(data, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(["augment", "--data", str(data), "--out", str(out), *TINY, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_a_judge_without_any_guide_asks_for_the_classifier(data, tmp_path, capsys):
    """Not the built-in world (whose guide is the default): a judge with no --classifier is the missing-guide error,
    before the judge is compared with the guides."""
    out = tmp_path / "bad"
    assert main(["augment", "--data", str(data), "--out", str(out), "--model", str(tmp_path / "no_model"),
                 "--preset", "higfa-judged", "--judge", str(ASSETS / "guidance_robust.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "uses classifier guidance: pass --classifier" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_overwrite_redoes_the_stages_whose_inputs_changed(recipe, data, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(recipe, out)
    before = outputs(out)
    args = ["augment", "--data", str(data), "--out", str(out), *TINY, *ROUND2, "--round2-filter", "0.5"]
    args[args.index("--guide-steps") + 1] = "3"
    assert main(args) == 2  # refused without --overwrite
    assert main([*args, "--overwrite"]) == 0
    after = outputs(out)
    key = json.loads((out / "guides" / "round2_guide.key.json").read_text())
    assert key["recipe"]["guide_steps"] == 3
    assert load_classifier(out / "guides" / "round2_guide.safetensors").provenance["steps"] == 3
    round1 = {k: v for k, v in before.items() if k.startswith("round1/")}
    assert round1 and all(after[k] == v for k, v in round1.items())  # round 1's inputs did not change
    assert after["guides/round2_guide.safetensors"] != before["guides/round2_guide.safetensors"]
    assert after["guides/round2_tuned.safetensors"] != before["guides/round2_tuned.safetensors"]
