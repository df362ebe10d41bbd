"""benchmarks/judge_probe.py's accounting on hand-made traces: the stage-2 shares the gate skipped, the shares
without a backward pass (per sample and per batch step), the final p_guide / p_judge; and its table."""

import json
from pathlib import Path

import pytest

from benchmarks.judge_probe import ARMS, TRAINED, judges_table, main, table, trace_stats, train_command
from higfa.trace import Trace, TraceStep


def step(i, stage, w, gated, p=None, pj=None, seconds=1.0):
    return TraceStep(index=i, progress=i / 4, sigma=1.0, stage=stage, cfg=7.5, contour=0.5, classifier_scale=w,
                     confidence=p, grad_norm=None, gated=gated, nan_skipped=[False] * len(w), seconds=seconds,
                     judge_confidence=pj)


def test_stage2_accounting():
    t = Trace(steps=[step(0, 1, [0.0, 0.0], [False, False]),
                     step(1, 2, [4.0, 2.0], [False, False], [0.2, 0.4], [0.1, 0.5], seconds=2.0),
                     step(2, 2, [0.0, 1.0], [True, False], [0.9, 0.6], [0.96, 0.7], seconds=4.0),
                     step(3, 2, [0.0, 0.0], [True, True], [0.99, 0.97], [0.98, 0.96], seconds=6.0)],
              judge="j")
    st = trace_stats([t])
    assert st["stage2_sample_steps"] == 6 and st["gated_sample_steps"] == 3
    assert st["gated_fraction"] == 0.5 and st["no_backward_fraction"] == 0.5
    assert st["batch_steps_without_backward_fraction"] == round(1 / 3, 4)  # only the last step skipped for all
    assert st["mean_stage2_w_cls"] == round(7 / 6, 4) and st["guided_step_seconds"] == 4.0
    assert st["final_p_guide"] == 0.98 and st["final_p_judge"] == 0.97 and st["sampling_fooling_gap"] == 0.01


def test_arms_pair_the_shipped_guides_and_independent_judges_and_the_table_has_a_row_per_arm():
    assert len({a.name for a in ARMS}) == len(ARMS)
    assert all(a.judge is None or a.judge != a.guide for a in ARMS)
    assert {(a.guide, a.judge) for a in ARMS if a.judge} == {
        ("guidance", "guidance_robust"), ("guidance_robust", "guidance"), ("guidance", "fewshot_convnext"),
        ("guidance", "fewshot_resnet_seed21"), ("guidance", "fewshot_efficientnet"),
        ("guidance_robust", "fewshot_resnet_seed21"), ("guidance", "fewshot_resnet18_pre"),
        ("ensemble3", "ensemble-others"), ("ensemble3", "fewshot_resnet_seed21"),
        ("ensemble3b", "fewshot_resnet18_pre")}
    from benchmarks.judge_probe import ENSEMBLES

    for a in ARMS:  # a judge did not guide: no classifier is in both
        if a.judge:
            assert not set(ENSEMBLES.get(a.guide, (a.guide,))) & set(ENSEMBLES.get(a.judge, (a.judge,))), a.name
    arm = {"settings": ARMS[0].settings(), "oracle_species": 0.5, "oracle_family": 1.0, "guide_species": 0.9,
           "guide_fooling_gap": 0.4, "final_p_guide": 0.8, "final_p_judge": None, "gated_fraction": 0.0,
           "no_backward_fraction": 0.1, "batch_steps_without_backward_fraction": 0.0, "mean_stage2_w_cls": 0.5,
           "guided_step_seconds": 1.0}
    lines = table({"arms": {"a": arm, "b": arm}}).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| a | higfa | guidance | – | 0.500 | 1.000 | 0.900 (+0.400)")


def test_independent_judges_are_trained_like_the_world_guide_with_another_architecture_or_seed():
    """The second classifier is the world guide's recipe (`higfa train-classifier`, which reproduces the world's
    guidance stage: tests/test_classifier_commands.py) on the same few-shot images; only the architecture or the
    seed differs, so it sees no label the guide did not."""
    from higfa.jobs.cli import build_parser
    from higfa.world.train import TrainConfig

    cfg = TrainConfig()
    guide = {"architecture": cfg.guidance_arch, "seed": cfg.seed + 20}
    for name in TRAINED:
        a = build_parser().parse_args(train_command(name, Path("/tmp/x")))
        assert (a.data, a.steps, a.augment) == (f"builtin:fewshot:{cfg.guidance_shots}", cfg.guidance_steps, "robust")
        differs = {k for k in guide if getattr(a, k) != guide[k]}
        assert len(differs) == 1, (name, differs)  # one thing changed: architecture or seed
        assert a.out == "/tmp/x/" + name
        # ... and the pretrained network also its start (the bench's weights from disjoint species) and its rate
        pre = name.startswith("fewshot_resnet18_")
        assert (a.init is None and a.lr == 3e-3) == (not pre), name
        assert a.head_only == (name == "fewshot_resnet18_probe"), name  # the linear probe: only its head learns
    from benchmarks.judge_probe import pretrained_weights

    a = build_parser().parse_args(train_command("fewshot_resnet18_pre", Path("/tmp/x")))
    assert a.init == pretrained_weights("tinybirds", make=False).as_posix() and "pretrain-resnet18-pre" in a.init


def test_a_result_file_of_other_settings_is_refused_not_overwritten(tmp_path):
    out = tmp_path / "probe.json"
    out.write_text(json.dumps({"per_species": 4, "arms": {"higfa": {}}}))
    with pytest.raises(SystemExit, match="other settings"):
        main(["--out", str(out), "--arms", "higfa"])
    assert json.loads(out.read_text())["arms"] == {"higfa": {}}
    with pytest.raises(SystemExit, match="unknown"):
        main(["--out", str(out), "--arms", "nope"])


def test_the_judges_table_lists_each_independent_judge_once():
    j = {"command": "higfa train-classifier ...", "architecture": "test_convnext", "seed": 20, "train_images": 160,
         "test_accuracy": 0.3162, "test_images": 800}
    arms = {"a": {"settings": {"judge": "fewshot_convnext"}, "judge_classifier": j},
            "b": {"settings": {"judge": "fewshot_convnext"}, "judge_classifier": j},
            "c": {"settings": {"judge": "guidance_robust"}}}
    lines = judges_table({"arms": arms}).splitlines()
    assert lines[2:] == ["| fewshot_convnext | test_convnext | 20 | 160 few-shot images | 0.316 (800 images) |"]
    assert judges_table({"arms": {"c": arms["c"]}}) == ""
    # the trained classifiers an arm guides with (an ensemble's members) are listed too, once
    k = dict(j, architecture="resnet18", seed=21)
    arms["d"] = {"settings": {"judge": None}, "trained_classifiers": {"fewshot_convnext": j, "fewshot_x": k}}
    assert judges_table({"arms": arms}).splitlines()[2:] == [
        "| fewshot_convnext | test_convnext | 20 | 160 few-shot images | 0.316 (800 images) |",
        "| fewshot_x | resnet18 | 21 | 160 few-shot images | 0.316 (800 images) |"]


def test_an_arm_names_the_trained_classifiers_it_uses_an_ensembles_members_included():
    from benchmarks.judge_probe import Arm, trained_used

    assert trained_used(Arm("x", "higfa-robust", "ensemble3")) == ["fewshot_resnet18_pre", "fewshot_efficientnet"]
    assert trained_used(Arm("y", "higfa-judged", "guidance", "fewshot_convnext")) == ["fewshot_convnext"]
    assert trained_used(Arm("z", "higfa-judged", "ensemble3", "ensemble-others")) == [
        "fewshot_resnet18_pre", "fewshot_efficientnet", "fewshot_convnext", "fewshot_resnet_seed21"]


def test_an_arm_split_over_shards_is_written_by_the_shard_that_ends_last(tmp_path, monkeypatch):
    """--shard I/N: each process makes its batches; the arm's numbers come once every batch is there, from the
    same images and traces as one process would have (here a stand-in sampler)."""
    import types

    import numpy as np

    import benchmarks.judge_probe as probe

    made = []

    def fake_generate(models, schedule, guide, judge, judge_name, targets, contours, seeds):
        made.append(tuple(seeds))
        t = Trace(steps=[step(0, 2, [4.0] * len(seeds), [False] * len(seeds), [0.5] * len(seeds))])
        return np.full((len(seeds), 2, 2, 3), len(made), np.uint8), types.SimpleNamespace(trace=t)

    monkeypatch.setattr(probe, "generate", fake_generate)
    monkeypatch.setattr(probe, "load_classifier_named", lambda models, name: name)
    monkeypatch.setattr(probe, "verdicts", lambda models, images, labels, g, j: {"n": len(images)})
    models = types.SimpleNamespace(contours=lambda images, seeds, transform: np.zeros(len(seeds)))
    src = type("Sources", (), {"images": np.zeros((5, 2, 2, 3), np.uint8), "labels": [0, 1, 2, 3, 4],
                               "__len__": lambda self: 5})()
    arm = ARMS[0]
    assert probe.run_arm(models, arm, src, 2, tmp_path, (0, 2)) is None  # batches 0 and 2 of 3
    assert len(made) == 2 and sorted(f.name for f in tmp_path.iterdir()) == ["batch000.npz", "batch002.npz"]
    out = probe.run_arm(models, arm, src, 2, tmp_path, (1, 2))
    assert len(made) == 3 and out["n"] == 5 and out["images"] == 5
    assert out["stage2_sample_steps"] == 5 and out["final_p_guide"] == 0.5
    assert probe.run_arm(models, arm, src, 2, tmp_path, (0, 1))["n"] == 5 and len(made) == 3  # nothing redone


def test_another_world_has_its_own_judges_file_and_batches_and_the_default_world_keeps_its_own(tmp_path):
    """--world finebirds: judges trained on finebirds' few-shot images by its guide's recipe, kept apart from
    tinybirds' (whose commands, folder and result file stay as recorded); an unknown world is refused."""
    from higfa.jobs.cli import build_parser
    from higfa.world.train_common import for_world

    import benchmarks.judge_probe as probe

    fine = build_parser().parse_args(train_command("fewshot_efficientnet", world="finebirds"))
    cfg = for_world("finebirds")
    assert (fine.data, fine.val, fine.steps) == (f"finebirds:fewshot:{cfg.guidance_shots}", "finebirds:test",
                                                 cfg.guidance_steps)
    assert fine.out == str(probe.TRAINED_DIR / "finebirds" / "fewshot_efficientnet")
    tiny = build_parser().parse_args(train_command("fewshot_efficientnet"))
    assert (tiny.data, tiny.out) == ("builtin:fewshot:10", str(probe.TRAINED_DIR / "fewshot_efficientnet"))
    assert probe.batch_dir(ARMS[0], {}, {"world": "finebirds"}).parent == probe.TRAINED_DIR / "finebirds" / "batches"
    assert probe.batch_dir(ARMS[0], {}, {}).parent == probe.TRAINED_DIR / "batches"
    with pytest.raises(SystemExit, match="--world 'nobirds'"):
        main(["--world", "nobirds", "--out", str(tmp_path / "x.json")])


def test_docs_show_the_recorded_probes_tables():
    """docs/quality.md's probe tables are what the result files give (`--table`), for each world with a file."""
    from benchmarks.judge_probe import OUT

    doc = (OUT.parents[2] / "docs" / "quality.md").read_text()
    for path in sorted(OUT.parent.glob("judge_probe*.json")):
        result = json.loads(path.read_text())
        assert table(result) in doc, f"docs/quality.md lacks {path.name}'s table: python -m benchmarks.judge_probe " \
                                     "--world ... --table"


def test_arms_whose_names_hold_commas_can_be_chosen():
    from benchmarks.judge_probe import split_arms

    assert split_arms("higfa,higfa-judged+judge=robust,lo0.5,higfa-robust") == (
        {"higfa", "higfa-judged+judge=robust,lo0.5", "higfa-robust"}, [])
    assert split_arms("higfa,nope,x") == ({"higfa"}, ["nope", "x"])


def test_ensembles_are_made_of_the_probes_own_classifiers():
    from benchmarks.judge_probe import ENSEMBLES, GUIDES

    assert all(len(ms) >= 2 and all(m in GUIDES and m not in ENSEMBLES for m in ms) for ms in ENSEMBLES.values())


def test_the_paired_difference_is_per_image_with_a_seeded_bootstrap_interval():
    import numpy as np

    from benchmarks.judge_probe import paired_difference

    a = np.array([1, 1, 1, 0, 1, 0, 1, 1], bool)
    b = np.array([1, 0, 1, 0, 0, 0, 1, 0], bool)
    d = paired_difference(a, b, resamples=2000)
    assert d["difference"] == 0.375 and d["a"] == 0.75 and d["b"] == 0.375 and d["images"] == 8
    assert d["ci95"][0] < 0.375 < d["ci95"][1] and d == paired_difference(a, b, resamples=2000)
    assert paired_difference(a, a, resamples=100)["ci95"] == [0.0, 0.0]
