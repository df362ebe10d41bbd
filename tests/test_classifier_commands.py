"""`higfa train-classifier`, `import-classifier`, `check-classifier`, `tune-classifier` with small stand-ins:
a world ImageFolder written by a fixture (3 species x 4 images), a few steps each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from higfa.classifier import load_classifier
from classifier_support import SPECIES, TINY, species_folder
from higfa.jobs.cli import main
from higfa.jobs.dataset import save_image
from higfa.world.birds import ASSETS, TinyBirds

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return species_folder(tmp_path_factory.mktemp("data") / "train")


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "classifiers" / "tiny"
    assert main(["train-classifier", "--data", str(folder), "--epochs", "2", "--val-fraction", "0.25",
                 "--out", str(out), *TINY]) == 0
    return out.with_suffix(".safetensors")


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # no thread oversubscription on busy CPUs


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = ENV
    return subprocess.run([sys.executable, "-m", "higfa", *args], capture_output=True, text=True, env=env, **kw)


def test_train_classifier_writes_weights_and_sidecar_with_provenance(trained, folder):
    side = json.loads(trained.with_suffix(".json").read_text())
    assert side["architecture"] == "test_resnet" and side["class_names"] == sorted(SPECIES)
    assert side["input_size"] == [3, 32, 32] and side["mean"] == [0.5] * 3 and side["model_kwargs"] == {}
    prov = side["provenance"]
    assert prov["data"] == str(folder) and prov["num_classes"] == 3 and prov["epochs"] == 2
    assert prov["val_images"] == 3 and 0.0 <= prov["val_accuracy"] <= 1.0  # one held-out image per class
    assert prov["train_images"] == 9 and prov["steps"] == 2 * 3 and "torch" in prov["versions"]
    assert set(prov["val_per_class"]) == {"mean", "min", "worst"}
    clf = load_classifier(trained)
    assert clf.num_classes == 3 and clf.provenance["val_accuracy"] == prov["val_accuracy"]
    assert clf.summary().startswith("test_resnet, 3 classes, val accuracy")
    assert not trained.with_name("tiny.resume.pt").exists()  # removed once training finished
    # a finished classifier is not silently retrained
    assert main(["train-classifier", "--data", str(folder), "--out", str(trained.with_suffix("")), *TINY]) == 2


def test_train_classifier_with_synthetic_images_uses_saspa_replacement(folder, tmp_path, monkeypatch, capsys):
    """--synthetic: a second-round guide trained on real + a `higfa augment` folder. The training draws each real
    image with 1 - α and one of its variants with α (the weights `higfa evaluate` uses); variants of the
    validation images stay out; the sidecar records what it was trained on."""
    import higfa.training

    syn = tmp_path / "round1"
    rows = []
    for img_path in sorted(folder.rglob("*.png")):
        rel = img_path.relative_to(folder).as_posix()
        for k in range(2):
            out = f"{img_path.parent.name}/{img_path.stem}_{k}.png"
            save_image(syn / out, np.zeros((32, 32, 3), np.uint8) + 40 * k)
            rows.append({"status": "ok", "label": img_path.parent.name, "output": out, "source": rel})
    (syn / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = {}
    real_train = higfa.training.train_classifier

    def spy(clf, images, labels, **kw):
        seen.update(n=len(images), weights=kw["weights"], labels=np.asarray(labels))
        return real_train(clf, images, labels, **kw)

    monkeypatch.setattr(higfa.training, "train_classifier", spy)
    out = tmp_path / "boot"
    assert main(["train-classifier", "--data", str(folder), "--synthetic", str(syn), "--alpha", "0.3", "--epochs", "1",
                 "--val-fraction", "0.25", "--out", str(out), *TINY]) == 0
    assert seen["n"] == 9 + 18  # 9 real training images, 2 variants each; the 3 validation images' variants left out
    w = seen["weights"] / seen["weights"].sum()
    assert w[:9].sum() == pytest.approx(0.7) and w[9:].sum() == pytest.approx(0.3)
    assert np.allclose(w[9:], 0.3 / 9 / 2)  # one of the two variants of a real image, uniformly
    prov = json.loads(out.with_suffix(".json").read_text())["provenance"]
    assert prov["synthetic"] == str(syn) and prov["synthetic_images"] == 18 and prov["alpha"] == 0.3
    assert prov["train_images"] == 9 and prov["steps"] == 3  # epochs count the real images
    for bad, expect in (([str(syn), "--alpha", "1.5"], "--alpha 1.5: "), ([str(tmp_path / "nope")], "--synthetic ")):
        assert main(["train-classifier", "--data", str(folder), "--synthetic", *bad, "--epochs", "1",
                     "--out", str(tmp_path / "bad"), *TINY]) == 2
        err = capsys.readouterr().err.strip()
        assert expect in err and len(err.splitlines()) == 1, err


def test_higfa_augment_guides_with_a_trained_classifier(trained, folder, tmp_path):
    r = _cli("augment", "--data", str(folder), "--model", "builtin", "--classifier", str(trained), "--limit", "1",
             "--variants", "1", "--steps", "3", "--out", str(tmp_path / "aug"), "--quiet", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "aug").rglob("*.png"))) == 1
    # the next round's guide trains on the real images + this folder: augment's manifest names its sources
    assert main(["train-classifier", "--data", str(folder), "--synthetic", str(tmp_path / "aug"), "--epochs", "1",
                 "--val-fraction", "0", "--out", str(tmp_path / "round2"), *TINY]) == 0
    assert json.loads((tmp_path / "round2.json").read_text())["provenance"]["synthetic_images"] == 1


def test_eval_every_sets_how_often_val_is_measured_and_changes_no_weight(folder, tmp_path, monkeypatch):
    """--eval-every N: the held-out set is evaluated every N steps and at the end (default once per epoch: 3 steps
    here; 0: only at the end); the trained weights are byte-identical whatever N."""
    import higfa.training as training

    calls: list[int] = []
    real = training.evaluate
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    runs = {}
    for every in (None, "0", "2"):
        calls.clear()
        out = tmp_path / f"e{every}"
        opt = [] if every is None else ["--eval-every", every]
        assert main(["train-classifier", "--data", str(folder), "--epochs", "2", "--val-fraction", "0.25",
                     "--out", str(out), *opt, *TINY]) == 0
        runs[every] = (len(calls), out.with_suffix(".safetensors").read_bytes())
    # 9 training images, batch 4: 3 steps per epoch, 6 steps; +1: the command's final measurement for the sidecar
    assert [runs[e][0] for e in (None, "0", "2")] == [2 + 1, 1 + 1, 3 + 1]
    assert runs[None][1] == runs["0"][1] == runs["2"][1]
    assert main(["train-classifier", "--data", str(folder), "--eval-every", "-1", "--out", str(tmp_path / "bad"),
                 *TINY]) == 2


def test_resume_after_kill_continues_from_the_last_checkpoint(folder, tmp_path):
    from higfa.training import CHECKPOINT_FORMAT

    out = tmp_path / "resume"
    args = ["train-classifier", "--data", str(folder), "--epochs", "30", "--val-fraction", "0", "--out", str(out),
            "--checkpoint-every", "3", *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "higfa", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    ckpt = out.with_name("resume.resume.pt")
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint was written before the kill"
    done = int(torch.load(ckpt, weights_only=True)["step"])
    assert done % 3 == 0 and 0 < done < 90  # --checkpoint-every 3
    r = _cli(*args, timeout=1200)
    assert r.returncode == 0, r.stderr
    assert f"resuming from {ckpt}" in r.stdout
    prov = json.loads(out.with_suffix(".json").read_text())["provenance"]
    assert prov["steps"] == 90 and not ckpt.exists()
    # a checkpoint of other settings is refused, not mixed in
    torch.save({"format": CHECKPOINT_FORMAT, "config": {"command": "train-classifier", "epochs": 1}}, ckpt)
    r = _cli(*args[:-len(TINY)], *TINY)
    assert r.returncode == 2 and "belongs to another run" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_import_round_trips_a_timm_checkpoint_with_the_same_logits(folder, tmp_path):
    import timm
    from safetensors.torch import save_file
    from timm.utils import CheckpointSaver

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = CheckpointSaver(model, opt, checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path))
    saver.save_checkpoint(epoch=0, metric=0.5)
    ckpt = next(tmp_path.glob("checkpoint-0.pth.tar"))
    save_file(model.state_dict(), str(tmp_path / "sd.safetensors"))
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    names = tmp_path / "names.txt"
    names.write_text("\n".join(sorted(SPECIES)) + "\n")
    for source, cls in ((ckpt, str(folder)), (tmp_path / "sd.safetensors", str(names))):
        out = tmp_path / "models" / source.stem.split(".")[0]
        assert main(["import-classifier", "--checkpoint", str(source), "--architecture", "test_resnet",
                     "--class-names", cls, "--input-size", "48", "--mean", ".5", ".5", ".5", "--std", ".5", ".5", ".5",
                     "--val", str(folder), "--out", str(out)]) == 0
        clf = load_classifier(out.with_suffix(".safetensors"))
        ref = model((x - 0.5) / 0.5)
        assert torch.allclose(clf(x), ref, atol=1e-5) and clf.class_names == sorted(SPECIES)
        assert clf.provenance["val_images"] == 12 and clf.provenance["command"] == "import-classifier"


def test_train_classifier_head_only_is_a_linear_probe_of_init(folder, tmp_path, capsys):
    """--head-only: only the final layer learns; every other weight and BatchNorm statistic is --init's.
    Without --init it is refused before anything is read or written."""
    import timm
    from safetensors.torch import load_file, save_file

    torch.manual_seed(5)
    start = timm.create_model("test_resnet", num_classes=7).state_dict()  # another task's head: replaced
    init = tmp_path / "pre.safetensors"
    save_file(start, str(init))
    out = tmp_path / "probe"
    assert main(["train-classifier", "--data", str(folder), "--epochs", "3", "--val-fraction", "0", "--init",
                 str(init), "--head-only", "--lr", "0.05", "--out", str(out), *TINY]) == 0
    got = load_file(str(out.with_suffix(".safetensors")))
    body = [k for k in start if not k.startswith("fc.")]
    assert body and all(torch.equal(got[k], start[k]) for k in body)  # running_mean/var included
    assert got["fc.weight"].shape == (3, start["fc.weight"].shape[1])
    assert json.loads(out.with_suffix(".json").read_text())["provenance"]["head_only"] is True
    assert main(["train-classifier", "--data", str(folder), "--head-only", "--out", str(tmp_path / "x"), *TINY]) == 2
    assert "--head-only trains only the final layer on the features of --init" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("case", ["class_count", "no_class_names", "unknown_arch", "non_image"])
def test_user_errors_are_one_line(case, folder, tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    sd = tmp_path / "sd.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=3).state_dict(), str(sd))
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["a", "b"]))
    imp = ["import-classifier", "--checkpoint", str(sd), "--architecture", "test_resnet", "--out", str(tmp_path / "o")]
    bad = tmp_path / "bad"
    if case == "non_image":
        import shutil

        shutil.copytree(folder, bad)
        (bad / SPECIES[0] / "notes.png").write_text("not an image")
    argv, expect = {
        "class_count": ([*imp, "--class-names", str(names)], "gives 2 classes but the checkpoint's head 'fc' has 3"),
        "no_class_names": (imp, "needs --class-names"),
        "unknown_arch": (["train-classifier", "--data", str(folder), "--architecture", "resnet_5000", "--out",
                          str(tmp_path / "o")], "'resnet_5000' is not a timm model"),
        "non_image": (["train-classifier", "--data", str(bad), "--out", str(tmp_path / "o"), *TINY],
                      "notes.png is unreadable or corrupt"),
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and len(err.splitlines()) == 1


def test_check_classifier_reports_the_world_guides_test_accuracy(tmp_path, capsys):
    shipped = json.loads((ASSETS / "training.json").read_text())["stages"]["guidance"]["test_accuracy"]
    report = tmp_path / "r.json"
    assert main(["check-classifier", str(ASSETS / "guidance"), "--data", "builtin:test", "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["accuracy"] == pytest.approx(shipped, abs=1e-4) and data["n"] == 800
    assert len(data["per_class"]) == 16 and len(data["confused_pairs"]) == 5
    worst = data["confused_pairs"][0]
    assert worst["count"] >= data["confused_pairs"][-1]["count"] and worst["true"] != worst["predicted"]
    assert f"accuracy {shipped:.4f} on 800 images" in capsys.readouterr().out


def test_check_classifier_fooling_gap_on_guided_samples(tmp_path):
    report = tmp_path / "r.json"
    assert main(["check-classifier", str(ASSETS / "guidance"), "--data", "builtin:fewshot:1", "--model", "builtin",
                 "--scorer", str(ASSETS / "oracle"), "--samples", "2", "--steps", "4", "--json", str(report)]) == 0
    fool = json.loads(report.read_text())["fooling"]
    assert fool["samples"] == 2 and 0 <= fool["guided_confidence"] <= 1
    assert fool["fooling_gap"] == pytest.approx(fool["guided_accuracy"] - fool["scorer_accuracy"], abs=1e-4)


def test_tune_classifier_writes_a_new_classifier_and_keeps_the_source(trained, folder, tmp_path):
    before = trained.read_bytes()
    out = tmp_path / "tuned"
    assert main(["tune-classifier", str(trained), "--data", str(folder), "--model", "builtin", "--views", "1",
                 "--epochs", "1", "--batch-size", "8", "--val", str(folder), "--out", str(out), "--no-progress"]) == 0
    assert trained.read_bytes() == before
    tuned = load_classifier(out.with_suffix(".safetensors"))
    src = load_classifier(trained)
    assert tuned.class_names == src.class_names and tuned.provenance["tuned_from"] == str(trained)
    assert tuned.provenance["views"] == 1 and tuned.provenance["val_images"] == 12
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), src.state_dict().values()))
    assert main(["tune-classifier", str(trained), "--data", str(folder), "--model", "builtin",
                 "--out", str(trained.with_suffix(""))]) == 2


def test_x0_predictions_are_seeded_per_image_and_stay_in_stage_two():
    from higfa.backends.components import Components
    from higfa.testing.pipeline_folder import tiny_components
    from higfa.jobs.tuning import x0_predictions

    parts = tiny_components(seed=0, latent_size=8)
    comps = Components(**{k: v for k, v in parts.items() if k in ("unet", "vae", "text_encoder", "tokenizer",
                                                                   "scheduler", "controlnet")}).to("cpu")
    s = comps.default_size
    imgs = np.random.default_rng(0).integers(0, 256, (3, s, s, 3), dtype=np.uint8)
    a = x0_predictions(comps, imgs, ["a", "b", "c"], views=2, seed=3, batch_size=4)
    b = x0_predictions(comps, imgs, ["a", "b", "c"], views=2, seed=3, batch_size=1)
    c = x0_predictions(comps, imgs, ["a", "b", "c"], views=2, seed=4, batch_size=4)
    assert a.images.shape == (6, *imgs.shape[1:]) and a.source.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.abs(a.images.astype(int) - b.images.astype(int)).max() <= 1  # independent of the batch size
    assert np.array_equal(a.sigmas, b.sigmas) and not np.array_equal(a.sigmas, c.sigmas)
    from higfa.backends.denoiser import noise_schedule_from_scheduler

    ns = noise_schedule_from_scheduler(comps.scheduler)
    assert (a.sigmas <= ns.percent_to_sigma(0.7) + 1e-4).all() and (a.sigmas >= ns.sigma_min - 1e-6).all()


def test_world_stage_and_train_classifier_give_the_same_guide(tmp_path):
    from safetensors.torch import load_file

    from higfa.world.train import TrainConfig, _classifier_stage

    cfg = TrainConfig(guidance_shots=1, guidance_steps=3)
    info = _classifier_stage(cfg, TinyBirds(), tmp_path, "guidance")
    assert main(["train-classifier", "--data", "builtin:fewshot:1", "--val-fraction", "0", "--architecture",
                 "test_resnet", "--input-size", "64", "--mean", ".5", ".5", ".5", "--std", ".5", ".5", ".5",
                 "--augment", "robust", "--steps", "3", "--seed", "20", "--out", str(tmp_path / "cli"),
                 "--no-progress"]) == 0
    world, cli = load_file(str(tmp_path / "guidance.safetensors")), load_file(str(tmp_path / "cli.safetensors"))
    assert world.keys() == cli.keys() and all(torch.equal(world[k], cli[k].half()) for k in world)
    prov = json.loads((tmp_path / "guidance.json").read_text())["provenance"]
    assert prov["val_accuracy"] == info["test_accuracy"] and prov["data"] == "builtin:fewshot:1"


def test_torchrun_ddp_on_cpu_with_gloo(folder, tmp_path):
    env = ENV
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "higfa", "train-classifier", "--data", str(folder), "--epochs", "2", "--val-fraction",
                        "0.25", "--out", str(out), *TINY], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    prov = json.loads(out.with_suffix(".json").read_text())["provenance"]
    assert prov["steps"] == 6 and load_classifier(out.with_suffix(".safetensors")).num_classes == 3
    assert r.stdout.count("wrote ") == 1  # rank 0 writes
