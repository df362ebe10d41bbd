"""`higfa augment` end to end on tiny diffusers components: layout, records, resume, kill and
Ctrl-C, torchrun with 2 processes, explicit shards + merge, the confidence filter, bad input.

All runs use one CPU thread per process (`--threads 1`, torchrun's OMP_NUM_THREADS=1): on the CPU
the float reductions, hence the PNG bytes, depend on the thread count, not on the process count.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from higfa.jobs.dataset import SourceImage, class_name_from_label  # noqa: E402
from higfa.jobs.plan import Item, Source, make_groups, make_items, make_sources  # noqa: E402
from higfa.seeds import derive_seed  # noqa: E402
from higfa.jobs.prompts import check_prompt, read_class_names  # noqa: E402
from higfa.jobs.distributed import Ranks, detect_ranks, shard  # noqa: E402

from augment_support import (CLASSES, N_ITEMS, args_for, assert_same_outputs, finished_records, images,  # noqa: E402
                             interrupt, make_image, manifest, run_cli, snapshot, start_augment, subprocess_env,
                             write_dataset)


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------- units
def test_item_seed_depends_on_seed_image_and_variant_only():
    s = derive_seed(0, "a/b.jpg", 1)
    assert s == derive_seed(0, "a/b.jpg", 1) and 0 <= s < 2**63
    assert len({s, derive_seed(1, "a/b.jpg", 1), derive_seed(0, "a/c.jpg", 1), derive_seed(0, "a/b.jpg", 0)}) == 4
    # the scheme itself is fixed (docs/method.md, "Seeds"): changing it would change every `higfa augment` output
    assert s == int.from_bytes(hashlib.sha256(b"higfa-augment|0|a/b.jpg|1").digest()[:8], "big") & (2**63 - 1)


@pytest.mark.parametrize("batch", [1, 3])
def test_sharding_has_no_duplicates_no_gaps_and_fixed_groups(batch):
    src = [Source(f"c/{i}.png", Path("."), "c", "c", None, str(i)) for i in range(7)]
    items = make_items(src, 3, seed=0)
    groups = make_groups(items, batch)
    for world in (1, 2, 3, 5, 32):
        shards = [shard(groups, Ranks(r, world)) for r in range(world)]
        keys = [it.key for s in shards for g in s for it in g]
        assert sorted(keys) == sorted(it.key for it in items) and len(keys) == len(set(keys))
        # a group is the same set of items whoever computes it
        assert sorted(tuple(it.key for it in g) for s in shards for g in s) == \
            sorted(tuple(it.key for it in g) for g in groups)


def test_detect_world_from_launchers():
    assert detect_ranks({}) == Ranks()
    t = detect_ranks({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (t.rank, t.world_size, t.local_rank, t.launcher, t.torchrun) == (3, 4, 1, "torchrun", True)
    s = detect_ranks({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1",
                      "SLURM_ARRAY_TASK_STEP": "2"})
    assert (s.rank, s.world_size, s.launcher) == (3, 4, "slurm-array")
    both = detect_ranks({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "RANK": "1", "WORLD_SIZE": "4",
                         "LOCAL_RANK": "1"})
    assert (both.rank, both.world_size, both.local_rank) == (5, 8, 1)
    assert detect_ranks({"RANK": "0", "WORLD_SIZE": "2"}, shard="1/3") == Ranks(1, 3, 0, "explicit")
    with pytest.raises(ValueError, match="i/n"):
        detect_ranks({}, shard="1-3")
    with pytest.raises(ValueError, match="not in a world"):
        detect_ranks({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="RANK='x'"):
        detect_ranks({"RANK": "x", "WORLD_SIZE": "2"})


def test_class_names_prompts_and_output_names(tmp_path):
    assert class_name_from_label("001.Black_footed_Albatross") == "Black footed Albatross"
    assert class_name_from_label("sparrow") == "sparrow"
    (tmp_path / "n.json").write_text(json.dumps({"a": "Alpha bird"}))
    assert read_class_names(tmp_path / "n.json", ["a"]) == {"a": "Alpha bird"}
    (tmp_path / "n.txt").write_text("a\tAlpha\nb\tBeta\n")
    assert read_class_names(tmp_path / "n.txt", ["a", "b"]) == {"a": "Alpha", "b": "Beta"}
    (tmp_path / "o.txt").write_text("Beta\nAlpha\n")
    assert read_class_names(tmp_path / "o.txt", ["b", "a"]) == {"a": "Beta", "b": "Alpha"}
    with pytest.raises(ValueError, match="2 names for 3 classes"):
        read_class_names(tmp_path / "o.txt", ["a", "b", "c"])
    check_prompt("a photo of a {class}, a type of {super} ({label})")
    with pytest.raises(ValueError, match=r"\['species'\]"):
        check_prompt("a {species}")
    found = [SourceImage(Path("x"), "a", "a/img.jpg"), SourceImage(Path("y"), "a", "a/img.png")]
    with pytest.raises(ValueError, match="would both write a/img_v"):
        make_sources(found, {})
    (s,) = make_sources([SourceImage(Path("z"), "b", "../raw/b/x y.jpg")], {"b": "Beta"})
    assert (s.name, s.class_name) == ("raw__b__x_y", "Beta")
    assert Item(s, 1, 0).output == "images/b/raw__b__x_y_v1.png"


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_end_to_end_layout_records_and_traces(world, reference):
    from higfa.trace import Trace

    out, err = reference
    assert "8 images written" in err and "images/s" in err and "mean final confidence" in err and "gated steps" in err
    expected = {f"images/{c}/img{i}_v{v}.png" for c in CLASSES for i in range(2) for v in range(2)}
    assert set(images(out)) == expected
    for data in images(out).values():
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (64, 64, 3)
    recs = manifest(out)
    assert [r["key"] for r in recs] == json.loads((out / "plan.json").read_text())["items"]
    for r in recs:
        src_id, variant = r["key"].split("#")
        assert r["source"] == src_id and r["variant"] == int(variant) and r["label"] in CLASSES
        assert r["seed"] == derive_seed(0, src_id, int(variant)) and r["schedule"] == "higfa" and r["status"] == "ok"
        assert 0 < r["confidence"] < 1 and r["seconds"] > 0 and r["run"]
        assert r["sha256"] == hashlib.sha256((out / r["output"]).read_bytes()).hexdigest()
        assert r["prompt"] in ("a photo of a Red Cardinal, a type of bird",
                               "a photo of a House Sparrow, a type of bird")
        trace = Trace.from_json((out / r["trace"]).read_text())
        assert len(trace.steps) == 3 and trace.schedule["preset"] == "higfa" and trace.target is not None
        assert r["measured_steps"] == sum(s.confidence is not None for s in trace.steps)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["items"], summary["finished"], summary["written"], summary["missing"]) == (8, 8, 8, 0)
    assert summary["mean_confidence"] == pytest.approx(np.mean([r["confidence"] for r in recs]))
    run = json.loads((out / "run.json").read_text())
    assert run["fingerprint"]["steps"] == 3 and run["hash"] == recs[0]["run"]


@pytest.mark.slow
def test_single_file_checkpoint_gives_the_same_bytes(world, reference, tmp_path):
    from higfa.backends.ldm_export import save_single_file
    from higfa.backends.components import load_components

    c = load_components(world["model"])
    ckpt = save_single_file(tmp_path / "tiny-sd.safetensors", c.unet, c.vae, c.text_encoder, c.controlnet)
    argv = args_for(world, tmp_path / "out")
    argv[argv.index("--model") + 1] = str(ckpt)
    rc, err = run_cli(argv + ["--config", world["model"], "--controlnet", ckpt.with_suffix(".controlnet.safetensors")])
    assert rc == 0, err
    assert images(tmp_path / "out") == images(reference[0])


@pytest.mark.slow
def test_rerun_skips_finished_outputs(world, reference):
    out = reference[0]
    before = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    rc, err = run_cli(args_for(world, out))
    assert rc == 0 and "0 images written" in err and "8 already done" in err
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == before


@pytest.mark.slow
def test_other_settings_refuse_the_folder_unless_overwrite(world, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    before = snapshot(out)
    rc, err = run_cli(args_for(world, out, "--steps", "4"))  # the last --steps wins
    assert rc == 2 and "holds the outputs of a different run" in err and "steps: 3 -> 4" in err and "--overwrite" in err
    assert snapshot(out) == before  # nothing touched
    rc, err = run_cli(args_for(world, out, "--steps", "4", "--overwrite"))
    assert rc == 0 and "8 images written" in err
    recs = manifest(out)
    assert len(recs) == 8 and len({r["run"] for r in recs}) == 1 and recs[0]["run"] != manifest(reference[0])[0]["run"]
    assert images(out) != images(reference[0])
    assert all(len(json.loads((out / r["trace"]).read_text())["steps"]) == 4 for r in recs)


def assert_resumes_byte_identical(world, reference, out: Path) -> None:
    """A plain rerun writes exactly the unfinished items and ends byte-identical to the reference."""
    kept = {k for k in finished_records(out)}
    rc, err = run_cli(args_for(world, out))
    assert rc == 0, err
    assert f"{N_ITEMS - len(kept)} images written" in err and f"{len(kept)} already done" in err
    assert_same_outputs(out, reference[0])
    assert not list(out.rglob("*.tmp")) and not list(out.glob(".lock*"))


@pytest.mark.slow
def test_killed_then_rerun_ends_byte_identical(world, reference, tmp_path):
    out = tmp_path / "out"
    rc, _, _ = interrupt(start_augment(world, out), out, 3, signal.SIGKILL)
    assert rc == -signal.SIGKILL  # no cleanup ran
    done = finished_records(out)
    assert len(done) >= 3 and not (out / "manifest.jsonl").exists()
    assert len(images(out)) - len(done) in (0, 1)  # at most the image in flight has no record yet
    assert_resumes_byte_identical(world, reference, out)


@pytest.mark.slow
def test_ctrl_c_keeps_finished_work_and_resumes(world, reference, tmp_path):
    out = tmp_path / "out"
    rc, err, _ = interrupt(start_augment(world, out), out, 2, signal.SIGINT)
    assert rc == 130 and "finished outputs are kept" in err, err
    done = finished_records(out)
    assert len(done) >= 2 and [r["key"] for r in manifest(out)] == [k for k in json.loads(
        (out / "plan.json").read_text())["items"] if k in done]  # the manifest lists what was finished
    assert_resumes_byte_identical(world, reference, out)


@pytest.mark.slow
def test_sigterm_exits_143_promptly_and_loses_nothing(world, reference, tmp_path):
    """SLURM preemption: SIGTERM, then SIGKILL after a grace period (30 s typical)."""
    out = tmp_path / "out"
    rc, err, seconds = interrupt(start_augment(world, out), out, 2, signal.SIGTERM)
    assert rc == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err, err
    assert seconds < 30
    done = finished_records(out)
    assert len(done) >= 2 and {r["key"] for r in manifest(out)} == set(done)  # records flushed and merged
    assert_resumes_byte_identical(world, reference, out)


@pytest.mark.slow
def test_torchrun_two_processes_same_outputs_each_written_once(world, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "higfa.jobs.cli", *args_for(world, out)]
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es) (torchrun)" in done.stderr and "(all ranks): 8 images written" in done.stderr
    parts = sorted((out / "parts").glob("*.jsonl"))
    assert [p.name for p in parts] == ["rank-00000-of-00002.jsonl", "rank-00001-of-00002.jsonl"]
    per_rank = [[json.loads(line)["key"] for line in p.read_text().splitlines()] for p in parts]
    plan = json.loads((out / "plan.json").read_text())["items"]
    assert per_rank == [plan[0::2], plan[1::2]]  # disjoint, complete, each item written once
    assert_same_outputs(out, reference[0])


@pytest.mark.slow
def test_slurm_array_and_explicit_shards_then_merge_match_one_process(world, tmp_path, monkeypatch):
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    rc, err = run_cli(args_for(world, one, "--batch-size", "3"))
    assert rc == 0, err
    rc, err = run_cli(args_for(world, sharded, "--batch-size", "3", "--shard", "1/2"))
    assert rc == 0 and "higfa merge" in err and not (sharded / "manifest.jsonl").exists()
    assert run_cli(["merge", sharded])[0] == 1  # shard 0 missing: merge says so
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")  # task 4 of an array 4-5: shard 0 of 2
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    rc, err = run_cli(args_for(world, sharded, "--batch-size", "3"))
    assert rc == 0 and "2 process(es) (slurm-array)" in err
    assert sorted(p.name for p in (sharded / "parts").iterdir()) == ["rank-00000-of-00002.jsonl",
                                                                      "rank-00001-of-00002.jsonl"]
    assert run_cli(["merge", sharded])[0] == 0
    assert_same_outputs(sharded, one)
    (sharded / "images" / CLASSES[0] / ".img0_v0.png.abc.tmp").write_bytes(b"torn")  # a killed writer's leftover
    run_cli(["merge", sharded])
    assert not list(sharded.rglob("*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mark", "drop"])
def test_confidence_filter(world, reference, tmp_path, mode):
    ref = {r["key"]: r["confidence"] for r in manifest(reference[0])}
    threshold = float(np.median(list(ref.values())))
    out = tmp_path / mode
    rc, err = run_cli(args_for(world, out, "--min-confidence", threshold, "--filter", mode))
    assert rc == 0, err
    below = {k for k, c in ref.items() if c < threshold}
    assert 0 < len(below) < len(ref)
    recs = {r["key"]: r for r in manifest(out)}
    assert {k for k, r in recs.items() if r["below_threshold"]} == below and len(recs) == 8
    summary = json.loads((out / "summary.json").read_text())
    if mode == "mark":
        assert len(images(out)) == 8 and summary["below_threshold"] == len(below)
    else:
        assert {k for k, r in recs.items() if r["status"] == "dropped"} == below
        assert len(images(out)) == 8 - len(below) and summary["dropped"] == len(below)
        rc, err = run_cli(args_for(world, out, "--min-confidence", threshold, "--filter", mode))
        assert "0 images written" in err and "8 already done" in err  # dropped items count as finished


@pytest.mark.slow
def test_filter_classifier_scores_the_final_images_instead_of_the_guide(world, reference, tmp_path):
    """--filter-classifier: the same images (it only judges), each confidence its softmax at its own index for the
    source's class (class order differs from the guide's), and --min-confidence applies to that."""
    from higfa.classifier import build_classifier, load_classifier, save_classifier
    from higfa.training import predict

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        judge = build_classifier("test_resnet", ["House Sparrow", "Red Cardinal"], 64, mean=(0.5,) * 3, std=(0.5,) * 3)
    path = save_classifier(judge, tmp_path / "judge.safetensors")
    out = tmp_path / "judged"
    rc, err = run_cli(args_for(world, out, "--filter-classifier", path))
    assert rc == 0, err
    assert images(out) == images(reference[0])  # sampling is the guide's alone
    recs = sorted(manifest(out), key=lambda r: r["key"])
    pics = np.stack([cv2.imread(str(out / r["output"]))[:, :, ::-1] for r in recs])
    p = predict(load_classifier(path).float(), pics).numpy()
    index = {"001.Red_Cardinal": 1, "002.House_Sparrow": 0}
    expected = [p[i, index[r["label"]]] for i, r in enumerate(recs)]
    assert [r["confidence"] for r in recs] == pytest.approx(expected, abs=1e-4)
    guide = {r["key"]: r["confidence"] for r in manifest(reference[0])}
    assert [r["confidence"] for r in recs] != pytest.approx([guide[r["key"]] for r in recs], abs=1e-3)
    threshold = float(np.median(expected))
    rc, err = run_cli(args_for(world, tmp_path / "kept", "--filter-classifier", path, "--min-confidence", threshold))
    assert rc == 0, err
    kept = {r["key"] for r in manifest(tmp_path / "kept") if r["status"] == "ok"}
    assert kept == {r["key"] for r, c in zip(recs, expected) if c >= threshold}
    # a judge that does not know a class is refused, naming the option
    other = save_classifier(build_classifier("test_resnet", ["Blue Jay", "Red Cardinal"], 64),
                            tmp_path / "o.safetensors")
    rc, err = run_cli(args_for(world, tmp_path / "bad", "--filter-classifier", other))
    assert rc != 0 and "--filter-classifier" in err and "002.House_Sparrow" in err


@pytest.mark.slow
def test_manifest_input_and_regenerating_one_image_alone(world, reference, tmp_path):
    """Seeds come from (seed, image id, variant): the same ids from a CSV give the same bytes."""
    rows = ["path,label"] + [f"{p.relative_to(world['data']).as_posix()},{p.parent.name}"
                             for p in sorted(world["data"].rglob("img1.png"))]
    csv = world["data"] / "subset.csv"
    csv.write_text("\n".join(rows) + "\n")
    try:
        rc, err = run_cli(args_for(world, tmp_path / "out", data=csv))
    finally:
        csv.unlink()
    assert rc == 0, err
    got, ref = images(tmp_path / "out"), images(reference[0])
    assert len(got) == 4 and all(got[k] == ref[k] for k in got)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.slow
def test_corrupt_images_and_empty_class_are_reported_and_skipped(world, tmp_path):
    data = write_dataset(tmp_path / "data")
    (data / CLASSES[0] / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (data / CLASSES[1] / "empty.png").write_bytes(b"")
    (data / "003.Empty_Class").mkdir()
    out = tmp_path / "out"
    rc, err = run_cli(args_for(world, out, data=data))
    assert rc == 0, err
    assert "class folder '003.Empty_Class' has no images" in err
    assert "skipped inputs (2)" in err and "broken.jpg" in err and "empty.png" in err and "unreadable or corrupt" in err
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(f["source"] for f in summary["failed_inputs"]) == [f"{CLASSES[0]}/broken.jpg",
                                                                     f"{CLASSES[1]}/empty.png"]
    assert summary["empty_classes"] == ["003.Empty_Class"]
    assert summary["written"] == 8 and summary["items"] == 12 and summary["missing"] == 0
    # fixing the file and rerunning fills in exactly the missing items
    shutil.copy(data / CLASSES[0] / "img0.jpg", data / CLASSES[0] / "broken.jpg")
    rc, err = run_cli(args_for(world, out, data=data))
    assert rc == 0 and "2 images written" in err and "8 already done" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [f["source"] for f in summary["failed_inputs"]] == [f"{CLASSES[1]}/empty.png"]


@pytest.mark.slow
def test_label_unknown_to_the_classifier_stops_before_touching_outputs(world, reference, tmp_path):
    data = write_dataset(tmp_path / "data")
    (data / "004.Blue_Jay").mkdir()
    shutil.copy(data / CLASSES[0] / "img1.png", data / "004.Blue_Jay" / "jay.png")
    before = snapshot(reference[0])
    rc, err = run_cli(args_for(world, reference[0], data=data))
    assert rc == 2 and "['004.Blue_Jay'] are not classes of the classifier" in err and "--class-names" in err
    assert snapshot(reference[0]) == before


def test_missing_paths_are_clear_errors_and_touch_nothing(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = args_for(world, out)
    model = argv.index("--model") + 1
    bad_model = argv[:model] + [str(tmp_path / "no-model")] + argv[model + 1:]
    rc, err = run_cli(bad_model)
    assert rc == 2 and f"model not found: {tmp_path / 'no-model'}" in err and "diffusers folder" in err
    rc, err = run_cli(argv[:argv.index("--classifier") + 1] + [str(tmp_path / "c.safetensors")]
                      + argv[argv.index("--classifier") + 2:])
    assert rc == 2 and "classifier weights not found" in err
    rc, err = run_cli(args_for(world, out, data=tmp_path / "no-data"))
    assert rc == 2 and "no-data not found" in err and "ImageFolder" in err
    rc, err = run_cli(args_for(world, out))  # a folder with someone else's files
    assert rc == 2 and "not empty and was not written by `higfa augment`" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.slow
def test_a_model_with_world_json_prompts_species_by_family(world, tmp_path):
    """The built-in world ships world.json: its text model knows families, so species get family prompts."""
    from higfa.classifier import build_classifier, save_classifier

    model = tmp_path / "world-model"
    shutil.copytree(world["model"], model)
    (model / "world.json").write_text(json.dumps({"world": {
        "class_names": ["red-crowned finch", "plain jay"], "species_family": ["finch", "jay"],
        "prompt_template": "a photo of a {family}"}}))
    data = tmp_path / "data"
    for k, label in enumerate(("001.red-crowned_finch", "plain jay")):
        (data / label).mkdir(parents=True)
        cv2.imwrite(str(data / label / "a.png"), make_image(np.random.default_rng(k)))
    weights = save_classifier(build_classifier("test_resnet", ["red-crowned finch", "plain jay"], 64),
                              tmp_path / "species.safetensors")
    argv = args_for(world, tmp_path / "out", "--variants", "1", data=data)
    argv[argv.index("--model") + 1] = str(model)
    argv[argv.index("--classifier") + 1] = str(weights)
    rc, err = run_cli(argv)
    assert rc == 0, err
    assert sorted(r["prompt"] for r in manifest(tmp_path / "out")) == ["a photo of a finch", "a photo of a jay"]
