"""The built-in tiny world: the generator (fast, no models) and the shipped models (loaded once)."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from higfa.world.birds import ASSETS, FAMILIES, SPECIES, TinyBirds, model_path

WORLD = TinyBirds()


# ---------------------------------------------------------------------------- generator
def test_world_shape_and_names():
    assert WORLD.num_classes == len(SPECIES) >= 12
    assert len(WORLD.family_names) == len(FAMILIES) >= 3
    assert len(set(WORLD.class_names)) == WORLD.num_classes
    for label, sp in enumerate(SPECIES):
        assert WORLD.prompt(label) == f"a photo of a {sp.family}"
        assert sp.family in sp.name  # species names extend the family name


def test_render_is_deterministic_and_seed_dependent():
    a = WORLD.render(3, 17)
    b = WORLD.render(3, 17)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
    assert np.abs(a.image.astype(int) - WORLD.render(3, 18).image.astype(int)).mean() > 5


def test_splits_are_deterministic_disjoint_and_prefix_stable():
    s1 = WORLD.split("fewshot", 3)
    s2 = WORLD.split("fewshot", 3)
    np.testing.assert_array_equal(s1.images, s2.images)
    assert list(s1.labels[:3]) == [0, 0, 0] and len(s1) == 3 * WORLD.num_classes
    bigger = WORLD.split("fewshot", 5)
    for c in range(WORLD.num_classes):  # the first 3 images of a class do not depend on the split size
        np.testing.assert_array_equal(bigger.images[bigger.of_class(c)[:3]], s1.images[s1.of_class(c)])
    seeds = {name: set(WORLD.split_seeds(name, 20)[1].tolist()) for name in ("train", "fewshot", "test")}
    assert not (seeds["train"] & seeds["test"]) and not (seeds["fewshot"] & seeds["test"])
    assert not (seeds["train"] & seeds["fewshot"])
    assert TinyBirds(seed=1).split_seeds("test", 2)[1].tolist() != WORLD.split_seeds("test", 2)[1].tolist()


def test_species_of_a_family_differ_only_in_marking_regions():
    checked = 0
    for seed in (0, 5, 11):
        for fam in WORLD.family_names:
            members = [i for i, s in enumerate(SPECIES) if s.family == fam]
            renders = {i: WORLD.render(i, seed) for i in members}
            for i in members:
                for j in members:
                    if i >= j:
                        continue
                    a, b = renders[i], renders[j]
                    diff = np.abs(a.image.astype(int) - b.image.astype(int)).max(2) > 3
                    region = np.zeros_like(diff)
                    for m in a.masks.values():
                        region |= m
                    region = cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
                    assert diff.any(), f"{SPECIES[i].name} and {SPECIES[j].name} look identical"
                    pair = f"{SPECIES[i].name} vs {SPECIES[j].name}"
                    assert not (diff & ~region).any(), f"{pair}: change outside markings"
                    assert region.mean() < 0.08  # the markings are small
                    checked += 1
    assert checked >= 3 * len(FAMILIES) * 6


def test_families_differ_in_large_features():
    # the same pose seed, different families: a large part of the image changes
    a, b = WORLD.render(0, 3).image, WORLD.render(8, 3).image  # plain finch vs plain jay
    assert (np.abs(a.astype(int) - b.astype(int)).max(2) > 20).mean() > 0.1


def test_masks_only_on_request_and_bad_inputs():
    assert WORLD.render(0, 0, masks=False).masks == {} and WORLD.render(0, 0, masks=False).parts == {}
    assert WORLD.split("test", 1, masks=True).masks.shape == (WORLD.num_classes, 64, 64)
    with pytest.raises(ValueError, match="out of range"):
        WORLD.render(99, 0)
    with pytest.raises(ValueError, match="unknown split"):
        WORLD.split("holdout", 1)


def test_legs_mask_is_thin_dark_and_below_the_body():
    """`Render.parts["legs"]` marks the two 1-px legs (the detail a 4x VAE drops first; the decoder stage weights
    it): a small area, drawn dark, under the bird's centre, and asking for it changes no pixel."""
    for label, seed in ((0, 1), (9, 2), (15, 3)):
        r = WORLD.render(label, seed)
        legs = r.parts["legs"]
        assert set(r.parts) == {"legs"} and not set(r.parts) & set(r.masks)
        assert 0.002 < legs.mean() < 0.03
        assert r.image[legs].mean() < 0.6 * r.image[~legs].mean()  # dark strokes, not the background
        rows = np.nonzero(legs.any(1))[0]
        body_rows = np.nonzero(np.any(np.stack(list(r.masks.values())), 0).any(1))[0]
        assert rows.mean() > body_rows.mean()  # below the markings (head, wing): image rows grow downwards
        np.testing.assert_array_equal(r.image, WORLD.render(label, seed, masks=False).image)
    split = WORLD.split("test", 1, masks=True)
    assert split.parts.shape == split.masks.shape and split.parts.any((1, 2)).all()
    w = split.loss_weights(4.0, 8.0)  # what the decoder stages weight their L1 by
    assert w.shape == (len(split), 1, *split.masks.shape[1:]) and w.dtype == np.float32
    assert set(np.unique(w)) <= {1.0, 5.0, 9.0, 13.0} and (w[:, 0][split.parts] >= 9).all()
    with pytest.raises(ValueError, match="masks=True"):
        WORLD.split("test", 1).loss_weights(4.0)


# ---------------------------------------------------------------------------- shipped models


@pytest.fixture(scope="module")
def models():
    from higfa.world.models import load_world

    return load_world()


def test_assets_layout_size_and_model_index():
    assert model_path() == ASSETS
    index = json.loads((ASSETS / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionControlNetPipeline"
    for part in ("unet", "controlnet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (ASSETS / part).is_dir() and part in index
    total = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert total < 20 * 2**20, f"shipped world is {total / 2**20:.1f} MB (budget 20 MB)"


def test_shipped_configs_are_the_documented_ones(models):
    from higfa.world.architecture import CONTROLNET_EMBEDDING, SCHEDULER_CONFIG, TEXT_CONFIG, UNET_CONFIG, VAE_CONFIG

    for key, value in UNET_CONFIG.items():
        assert models.unet.config[key] == (list(value) if isinstance(value, tuple) else value), key
    for key, value in VAE_CONFIG.items():
        assert models.vae.config[key] == (list(value) if isinstance(value, tuple) else value), key
    assert tuple(models.controlnet.config.conditioning_embedding_out_channels) == CONTROLNET_EMBEDDING
    for key, value in TEXT_CONFIG.items():
        assert getattr(models.text_encoder.config, key) == value, key
    assert models.noise_schedule.num_timesteps == SCHEDULER_CONFIG["num_train_timesteps"]
    assert models.latent_shape == (8, 16, 16) and models.vae.config.scaling_factor > 0
    assert models.guidance.architecture == "test_resnet" and models.oracle.architecture == "resnet10t"
    assert models.guidance.class_names == WORLD.class_names == models.oracle.class_names
    assert all(p.dtype == torch.float32 for p in models.unet.parameters())  # fp16 on disk, fp32 loaded


def test_tokenizer_knows_families_not_species(models):
    tok = models.tokenizer
    unk = tok.unk_token_id
    fam_ids = tok("a photo of a finch").input_ids
    assert unk not in fam_ids and fam_ids[0] == tok.bos_token_id and fam_ids[-1] == tok.eos_token_id
    sp_ids = tok("red-crowned spectacled orange-billed").input_ids
    assert set(sp_ids[1:-1]) <= {unk, tok.convert_tokens_to_ids("-")} or unk in sp_ids


def test_vae_reconstructs_markings(models):
    """The decoder must draw the species markings, or guidance through it cannot work."""
    test = WORLD.split("test", 2)
    x = torch.from_numpy(test.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z = models.vae.encode(x).latent_dist.mean * models.vae.config.scaling_factor
        rec = models.decode()(z).clamp(0, 1)
    rec_u8 = (rec * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    from higfa.training import evaluate

    real = evaluate(models.oracle, test.images, test.labels)["accuracy"]
    recon = evaluate(models.oracle, rec_u8, test.labels)["accuracy"]
    assert real > 0.9 and recon > real - 0.1, (real, recon)


def test_classifiers_beat_chance_on_the_test_split(models):
    from higfa.training import evaluate

    test = WORLD.split("test", 6)
    g = evaluate(models.guidance, test.images, test.labels)["accuracy"]
    o = evaluate(models.oracle, test.images, test.labels)["accuracy"]
    assert g > 0.5, f"few-shot guidance classifier: {g:.2f} (chance {1 / WORLD.num_classes:.2f})"
    assert o > 0.9, f"oracle: {o:.2f}"


def test_short_sample_higfa_beats_contour_for_the_same_seeds(models):
    from higfa.schedule import Schedule
    from higfa.training import predict

    few = WORLD.split("fewshot", 1)
    pick = [1, 3, 6, 13]  # red-crowned finch, orange-billed finch, spectacled warbler, red-crowned dove
    contours = models.contours(few.images[pick], seeds=[0, 1, 2, 3])
    out = {}
    for preset in ("contour", "higfa"):
        gen = models.generate(Schedule.from_preset(preset), pick, contours, seeds=[10, 11, 12, 13], steps=12)
        assert gen.images.shape == (4, 64, 64, 3)
        rows = torch.arange(4)
        out[preset] = (predict(models.guidance, gen.images)[rows, pick].mean(),
                       models.oracle_probs(gen.images)[rows, pick].mean(), gen.result.trace)
    assert out["higfa"][0] > out["contour"][0] + 0.1, "guidance confidence did not rise"
    assert out["higfa"][1] > out["contour"][1], "oracle confidence did not rise"
    summary = out["higfa"][2].summary()
    assert summary["guided_sample_steps"] > 0 and summary["nan_skipped"] == 0


def test_diffusers_pipeline_loads_the_shipped_folder():
    from diffusers import StableDiffusionControlNetPipeline
    from PIL import Image

    pipe = StableDiffusionControlNetPipeline.from_pretrained(model_path(), torch_dtype=torch.float32,
                                                             local_files_only=True)
    assert pipe.vae_scale_factor == 4
    hint = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    out = pipe("a photo of a finch", image=hint, height=64, width=64, num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()


def test_demo_writes_its_files(tmp_path):
    from higfa.world.demo import run_demo

    before = torch.get_num_threads()
    metrics = run_demo(tmp_path, species=["red-crowned finch", "plain jay"], steps=3, progress=False, threads=1)
    assert metrics["settings"]["threads"] == 1 and torch.get_num_threads() == before  # the caller's setting is restored
    for name in ("contact_sheet.png", "trace.png", "trace.json", "metrics.json"):
        assert (tmp_path / name).is_file(), name
    assert set(metrics["presets"]) == {"cfg", "contour", "higfa", "higfa-robust", "higfa-judged"}
    assert len(metrics["rows"]) == 2
    sheet = cv2.imread(str(tmp_path / "contact_sheet.png"))
    assert sheet.shape[0] > 2 * 128 and sheet.shape[1] > 7 * 128
    # the trace is the judged preset's batch: the judge's p drove the ramp, the guide's p beside it
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert trace["schedule"]["preset"] == "higfa-judged" and trace["schedule"]["modulate"] and trace["judge"]
    stage2 = [r for r in trace["steps"] if r["stage"] == 2]
    assert stage2 and all(len(r["judge_confidence"]) == len(r["confidence"]) == 2 for r in stage2)
    judged = metrics["presets"]["higfa-judged"]
    assert 0 <= judged["judge_p_target"] <= 1 and "judge_p_target" not in metrics["presets"]["higfa-robust"]
    assert metrics["traced"]["stage2_sample_steps"] == 2 * len(stage2)
    assert metrics["traced"]["p_judge_last"] is not None


def test_the_demo_judges_with_the_world_loaders_judge():
    """The demo's judge is the file the World Loader offers as `judge`: one name, in the core (higfa.world.models),
    which both import (a node file cannot be imported without ComfyUI, so its source is read)."""
    import re

    from higfa.world import demo, models

    assert demo.JUDGE_FILE is models.JUDGE_FILE
    nodes = (Path(__file__).parents[1] / "nodes" / "world.py").read_text()
    assert re.search(r"^from \.\.higfa\.world\.models import .*\bJUDGE_FILE\b", nodes, re.M)
    assert not re.search(r"^JUDGE_FILE\s*=", nodes, re.M)


def test_demo_threads_leave_busy_cores_alone(monkeypatch):
    """`make demo` next to other jobs: torch's threads stall on a shared core, so the default counts only the
    cores the load average leaves idle (never fewer than 1, never more than torch's own default)."""
    import os

    from higfa.world.demo import idle_cores

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert idle_cores() == 4
    monkeypatch.setattr(os, "getloadavg", lambda: (5.4, 0.0, 0.0))
    assert idle_cores() == 3
    monkeypatch.setattr(os, "getloadavg", lambda: (12.0, 0.0, 0.0))
    assert idle_cores() == 1


# ---------------------------------------------------------------------------- training
def test_diffusion_more_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """`make train-world` may be cut short: the diffusion stages checkpoint every `checkpoint_every`
    steps, and a run killed after a checkpoint resumes to exactly the weights of an uncut run."""
    import dataclasses
    import shutil

    from higfa.world import train, train_diffusion

    for run in ("uncut", "cut"):
        shutil.copytree(ASSETS, tmp_path / run, ignore=shutil.ignore_patterns("*tiny_decoder*", "guidance_*"))
    cfg = dataclasses.replace(train.TrainConfig(), diffusion_per_class=2, diffusion_batch=4, diffusion_more_steps=4,
                              checkpoint_every=2)
    train.run(cfg, ["diffusion_more"], tmp_path / "uncut")

    real_cosine = train_diffusion.cosine_lr

    def killed_at_step_3(step, total, warmup, floor=0.1):
        if step == 3:
            raise KeyboardInterrupt  # like Ctrl-C or the machine going away after the step-2 checkpoint
        return real_cosine(step, total, warmup, floor)

    monkeypatch.setattr(train_diffusion, "cosine_lr", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, ["diffusion_more"], tmp_path / "cut")
    ckpt = tmp_path / "cut" / "checkpoints" / "diffusion_more.pt"
    assert torch.load(ckpt, weights_only=True)["step"] == 2
    monkeypatch.setattr(train_diffusion, "cosine_lr", real_cosine)
    info = train.run(cfg, ["diffusion_more"], tmp_path / "cut")["diffusion_more"]
    assert info["resumed_at"] == 2 and not ckpt.exists()  # a finished stage removes its checkpoint
    from safetensors.torch import load_file

    for part in ("unet", "controlnet", "text_encoder"):
        name = "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
        a, b = (load_file(tmp_path / run / part / name) for run in ("uncut", "cut"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
        shipped = load_file(ASSETS / part / name)
        assert any(not torch.equal(a[k], shipped[k]) for k in a), f"{part}: trained weights unchanged"
        assert "_name_or_path" not in json.loads((tmp_path / "cut" / part / "config.json").read_text())


def test_vae_decoder_stage_keeps_the_latent_space(tmp_path):
    """The vae_decoder stage fine-tunes only the decoder side: the encoder (the diffusion model's latent
    space) is bit-identical afterwards, so it may run after the diffusion stages."""
    import dataclasses
    import shutil

    from safetensors.torch import load_file

    from higfa.world import train

    shutil.copytree(ASSETS / "vae", tmp_path / "vae")
    before = load_file(tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    cfg = dataclasses.replace(train.TrainConfig(), vae_per_class=2, vae_batch=8, vae_decoder_steps=3)
    info = train.run(cfg, ["vae_decoder"], tmp_path)["vae_decoder"]
    after = load_file(tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and decoder and info["steps"] == 3
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    assert "_name_or_path" not in json.loads((tmp_path / "vae" / "config.json").read_text())


def test_training_record_keeps_the_history_of_fine_tune_stages(tmp_path):
    """A fine-tune stage run again trains the weights further: its record keeps the earlier runs and the totals
    count them; re-running the stage it fine-tunes replaces those weights, so its record goes."""
    from higfa.world import train

    def run(stage, seconds):
        train._record(tmp_path, stage, {"steps": seconds, "stage_cpu_seconds": seconds, "stage_wall_seconds": seconds})
        return json.loads((tmp_path / "training.json").read_text())

    run("vae", 100)
    run("vae_decoder", 10)
    data = run("vae_decoder", 20)
    assert data["stages"]["vae_decoder"]["steps"] == 20
    assert [r["steps"] for r in data["stages"]["vae_decoder"]["earlier_runs"]] == [10]
    data = run("vae_decoder", 30)
    assert [r["steps"] for r in data["stages"]["vae_decoder"]["earlier_runs"]] == [10, 20]
    assert data["total_cpu_seconds"] == 160
    data = run("diffusion", 5)  # not the base of vae_decoder: nothing dropped, nothing stacked
    data = run("diffusion", 6)
    assert data["stages"]["diffusion"] == {"steps": 6, "stage_cpu_seconds": 6, "stage_wall_seconds": 6}
    data = run("vae", 100)  # new VAE weights: the decoder fine-tunes described weights that are gone
    assert "vae_decoder" not in data["stages"] and data["total_cpu_seconds"] == 106
