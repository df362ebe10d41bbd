"""The harder world `finebirds` (generator only, fast) and what the worlds share: the catalog, tinybirds untouched,
`train-world --world` with resumable stages."""

import hashlib
import itertools
import json

import cv2
import numpy as np
import pytest
import torch

from higfa.world.birds import TinyBirds
from higfa.world.catalog import WORLDS, assets, make_world
from higfa.world.finebirds import COMBINATIONS, FAMILIES, MARKINGS, SPECIES, finebirds

FINE = finebirds()


def test_tinybirds_images_are_unchanged():
    """The demo's world draws exactly what it drew before finebirds generalised the drawing code: a hash of
    every split's images, masks and legs (recorded at the commit that added finebirds)."""
    w, h = TinyBirds(), hashlib.sha256()
    for split in ("train", "fewshot", "test", "val"):
        s = w.split(split, 6, masks=True)
        for a in (s.images, s.labels, s.seeds, s.masks, s.parts):
            h.update(a.tobytes())
    r = w.render(5, 123)
    for k in sorted(r.masks):
        h.update(r.masks[k].tobytes())
    assert h.hexdigest() == "4326831bca054471839a839414602e42f98f95a80b967724e92b9ace73582082"


def test_finebirds_has_8_families_of_6_species_named_by_their_markings():
    assert FINE.name == "finebirds" and FINE.num_classes == len(SPECIES) == 48
    assert len(FINE.family_names) == len(FAMILIES) == 8 and len(set(FINE.class_names)) == 48
    counts = np.bincount(FINE.family_labels())
    assert counts.tolist() == [6] * 8 and len(COMBINATIONS) == 6
    for label, sp in enumerate(SPECIES):
        assert FINE.prompt(label) == f"a photo of a {sp.family}"  # the text knows the family only
        assert sp.name.endswith(" " + sp.family)
    assert set(FINE.markings) == set(MARKINGS) and "tail_band" in MARKINGS and "breast_spots" in MARKINGS


def _marking_values(sp) -> tuple:
    return (sp.crown, sp.wing_bar and sp.wing_bars, sp.eye_ring, sp.beak, sp.tail_band, sp.breast_spots)


def test_species_are_combinations_no_single_marking_names_one():
    """Within a family two species differ in 1 to 3 markings, and every value of a varying marking is shared by
    at least two species: a classifier must read a combination, as in real fine-grained data."""
    for fam in FINE.family_names:
        members = [s for s in SPECIES if s.family == fam]
        values = [_marking_values(s) for s in members]
        assert len(set(values)) == 6
        for a, b in itertools.combinations(values, 2):
            assert 1 <= sum(x != y for x, y in zip(a, b)) <= 3
        for k in range(len(values[0])):
            column = [v[k] for v in values]
            assert all(column.count(v) >= 2 for v in column), (fam, k)


def test_render_is_deterministic_seeded_and_uses_the_nuisance_layers():
    a, b = FINE.render(7, 17), FINE.render(7, 17)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
    assert set(a.masks) == set(MARKINGS) and set(a.parts) == {"legs"}
    assert np.abs(a.image.astype(int) - FINE.render(7, 18).image.astype(int)).mean() > 5
    plain = TinyBirds(families=FINE.families, species=FINE.species, markings=FINE.markings,
                      marking_scale=FINE.marking_scale)  # the same birds without the nuisance layers
    assert FINE.nuisance.extras and not plain.nuisance.extras
    assert np.abs(plain.render(7, 17).image.astype(int) - a.image.astype(int)).mean() > 3


def test_splits_are_deterministic_disjoint_and_prefix_stable():
    s1, s2 = FINE.split("fewshot", 2), FINE.split("fewshot", 2)
    np.testing.assert_array_equal(s1.images, s2.images)
    assert len(s1) == 96 and list(s1.labels[:2]) == [0, 0]
    bigger = FINE.split("fewshot", 3)
    for c in (0, 17, 47):
        np.testing.assert_array_equal(bigger.images[bigger.of_class(c)[:2]], s1.images[s1.of_class(c)])
    seeds = {name: set(FINE.split_seeds(name, 30)[1].tolist()) for name in ("train", "fewshot", "test", "val")}
    for x, y in itertools.combinations(seeds, 2):
        assert not seeds[x] & seeds[y], (x, y)


def test_species_of_a_family_differ_only_inside_their_marking_masks():
    checked = 0
    for seed in (3, 12):
        for fam in FINE.family_names:
            members = [i for i, s in enumerate(SPECIES) if s.family == fam]
            renders = {i: FINE.render(i, seed) for i in members}
            region = np.zeros((64, 64), bool)
            for m in renders[members[0]].masks.values():
                region |= m
            for i, j in itertools.combinations(members, 2):
                assert all(np.array_equal(renders[i].masks[k], renders[j].masks[k]) for k in MARKINGS)
                diff = np.abs(renders[i].image.astype(int) - renders[j].image.astype(int)).max(2) > 3
                grown = cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
                assert diff.any(), f"{SPECIES[i].name} and {SPECIES[j].name} look identical (seed {seed})"
                assert not (diff & ~grown).any(), f"{SPECIES[i].name} vs {SPECIES[j].name}: change outside markings"
                checked += 1
            assert region.mean() < 0.12  # the markings are small
    assert checked == 2 * 8 * 15


def test_each_marking_mask_is_small_and_where_the_marking_is_drawn():
    r = FINE.render(5, 4)  # red-crowned two-barred orange-billed finch
    for name, m in r.masks.items():
        assert 0 < m.mean() < 0.04, name
    split = FINE.split("test", 1, masks=True)
    assert split.masks.shape == (48, 64, 64) and split.masks.any((1, 2)).all()


def test_catalog_names_worlds_and_their_folders():
    assert WORLDS == ("tinybirds", "finebirds")
    assert make_world("tinybirds").class_names == TinyBirds().class_names
    assert make_world("finebirds", seed=3).split_seeds("test", 1)[1].tolist() == \
        finebirds(seed=3).split_seeds("test", 1)[1].tolist()
    assert assets("tinybirds").name == "assets" and assets("finebirds").name == "assets_finebirds"
    with pytest.raises(ValueError, match="unknown world 'cub'"):
        make_world("cub")
    with pytest.raises(ValueError, match="unknown world"):
        assets("cub")


# ---------------------------------------------------------------------------- training
def test_train_config_and_stage_order_per_world():
    from higfa.world.train import WORLD_STAGES, _add_arguments, _config
    from higfa.world.train_common import TrainConfig, for_world

    fine = for_world("finebirds", seed=3)
    assert fine.world == "finebirds" and fine.seed == 3 and fine.oracle_steps > TrainConfig().oracle_steps
    assert for_world("tinybirds") == TrainConfig()
    # finebirds' oracle also learns mildly blurred images (the VAE and the sampler draw softer edges); tinybirds' not
    assert (fine.oracle_blur, TrainConfig().oracle_blur) == (1.0, 0.0)
    order = WORLD_STAGES["finebirds"]
    assert order.index("oracle") < order.index("vae_decoder") < order.index("diffusion") < order.index(
        "diffusion_more") and "tiny_decoder" not in order
    import argparse

    p = argparse.ArgumentParser()
    _add_arguments(p)
    cfg = _config(p.parse_args(["--world", "finebirds", "--oracle-steps", "7", "--set", "vae_lr=1e-3"]))
    assert (cfg.world, cfg.oracle_steps, cfg.vae_lr, cfg.vae_steps) == ("finebirds", 7, 1e-3, fine.vae_steps)
    with pytest.raises(ValueError, match="world"):
        _config(p.parse_args(["--set", "world=finebirds"]))


def test_resume_skips_recorded_stages_and_a_cut_vae_stage_continues(tmp_path, monkeypatch):
    """`make train-world` resumes: stages training.json records are skipped, and the VAE stage, cut after a
    checkpoint, continues to exactly the weights of an uncut run."""
    import dataclasses

    from safetensors.torch import load_file

    from higfa.world import train, train_vae

    cfg = dataclasses.replace(train.TrainConfig(), vae_per_class=1, vae_batch=4, vae_steps=4, checkpoint_every=2)
    train.run(cfg, ["vae"], tmp_path / "uncut")
    real = train_vae.cosine_lr

    def killed_at_step_3(step, total, warmup, floor=0.1):
        if step == 3:
            raise KeyboardInterrupt
        return real(step, total, warmup, floor)

    monkeypatch.setattr(train_vae, "cosine_lr", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, ["vae"], tmp_path / "cut", resume=True)
    assert torch.load(tmp_path / "cut" / "checkpoints" / "vae.pt", weights_only=True)["step"] == 2
    assert json.loads((tmp_path / "cut" / "world.json").read_text())["world"]["name"] == "tinybirds"
    monkeypatch.setattr(train_vae, "cosine_lr", real)
    info = train.run(cfg, ["vae"], tmp_path / "cut", resume=True)["vae"]
    assert info["resumed_at"] == 2 and not (tmp_path / "cut" / "checkpoints").exists()
    name = "vae/diffusion_pytorch_model.safetensors"
    a, b = load_file(tmp_path / "uncut" / name), load_file(tmp_path / "cut" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert train.run(cfg, ["vae"], tmp_path / "cut", resume=True) == {}  # recorded: skipped


def test_finebirds_latent_has_16_channels_in_the_vae_the_unet_and_world_json(tmp_path):
    """finebirds' 8-channel VAE lost its 1-2 px markings (ceiling 0.708), so its latent has 16 channels: the VAE
    stage builds them, world.json's latent and ComfyUI UNet config say so, tinybirds' configs stay at 8."""
    import dataclasses

    from diffusers import AutoencoderKL

    from higfa.world import train
    from higfa.world.architecture import COMFYUI_UNET_CONFIG, UNET_CONFIG, VAE_CONFIG, with_latent_channels
    from higfa.world.train_common import for_world

    assert for_world("finebirds").latent_channels == 16 and for_world("tinybirds").latent_channels == 8
    unet = with_latent_channels(UNET_CONFIG, 16)
    assert (unet["in_channels"], unet["out_channels"], UNET_CONFIG["in_channels"]) == (16, 16, 8)
    assert with_latent_channels(COMFYUI_UNET_CONFIG, 16)["in_channels"] == 16
    assert with_latent_channels(VAE_CONFIG, 16)["latent_channels"] == 16 and VAE_CONFIG["latent_channels"] == 8
    cfg = dataclasses.replace(for_world("finebirds"), vae_per_class=1, vae_batch=2, vae_steps=1)
    train.run(cfg, ["vae"], tmp_path)
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert vae.config.latent_channels == 16
    assert vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean.shape == (1, 16, 16, 16)
    info = json.loads((tmp_path / "world.json").read_text())
    assert info["latent"]["channels"] == 16 and info["comfyui_unet_config"]["in_channels"] == 16


def test_occluding_leaves_cover_at_most_a_fifth_of_any_marking():
    """The leaf cluster in front of a bird may hide part of it, never most of a marking (an image must still show
    its species): drawn on a blank canvas over two marking discs, it covers <= 20 % of each (+ anti-aliasing)."""
    from higfa.world.drawing import Pose, _occlude

    pose = Pose(cx=128, cy=128, scale=100, angle=0.0, flip=False, wing_angle=0, head_dx=0, head_dy=0, tail_dangle=0,
                shade=1, branch_angle=0)
    masks = {}
    for name, (x, y) in {"crown": (150, 90), "breast_spots": (140, 160)}.items():
        masks[name] = np.zeros((256, 256), np.float32)
        cv2.circle(masks[name], (x, y), 18, 1.0, -1)
    drawn = 0
    for seed in range(30):
        canvas = np.zeros((256, 256, 3), np.float32)
        _occlude(canvas, np.random.default_rng(seed), 1.0, pose, masks)
        covered = canvas.max(2) > 0
        drawn += bool(covered.any())
        for name, m in masks.items():
            assert (covered & (m > 0)).sum() <= 0.2 * (m > 0).sum() + 60, (seed, name)
    assert drawn >= 10  # most seeds find a place


def test_headroom_check_runs_and_reports_a_curve():
    from higfa.world.headroom import headroom, vgg

    assert sum(p.numel() for p in vgg(48).parameters()) < 500_000
    out = headroom("tinybirds", "vgg", [1, 2], steps=4, test_per_class=1, log=lambda *_: None)
    assert set(out) == {1, 2} and all(len(r["curve"]) == 4 and 0 <= r["accuracy"] <= 1 for r in out.values())


def test_jobs_name_the_shipped_worlds_for_model_and_data(tmp_path, monkeypatch):
    """`--model finebirds` is that world's folder ('builtin' stays tinybirds), `--data finebirds:test:1` its split."""
    from higfa.jobs.labelled import read_labelled
    from higfa.jobs.model_path import builtin_folder, builtin_world, is_builtin, model_path
    from higfa.world import birds

    assert [builtin_world(m) for m in ("builtin", "tinybirds", "finebirds", "cub", None)] == [
        "tinybirds", "tinybirds", "finebirds", None, None]
    assert is_builtin("finebirds") and not is_builtin(tmp_path)
    assert builtin_folder("finebirds") == assets("finebirds") and builtin_folder() == assets("tinybirds")
    monkeypatch.setattr(birds, "ASSETS", tmp_path / "assets")  # no finebirds models there
    with pytest.raises(FileNotFoundError, match=r"finebirds world's models.*--world finebirds"):
        model_path("finebirds")
    data = read_labelled("finebirds:test:1", 64)
    assert len(data.images) == 48 and data.classes == FINE.class_names and data.labels[0] == FINE.class_names[0]
    assert read_labelled("builtin:test:1", 64).classes == TinyBirds().class_names
    with pytest.raises(ValueError, match="finebirds:<split>"):
        read_labelled("finebirds:holdout", 64)


def test_higfa_augment_on_the_finebirds_models_with_its_judge(tmp_path):
    """`higfa augment --model finebirds` (the shipped folder: 16-channel latent, 48-species guide) on an ImageFolder
    of its few-shot images, judged by the world's judge: family prompts, 64 px outputs, the judge's p recorded."""
    from higfa.jobs.cli import main

    world, data = make_world("finebirds"), tmp_path / "data"
    few = world.split("fewshot", 1)
    for i in (0, 47):
        name = world.class_names[int(few.labels[i])]
        (data / name).mkdir(parents=True)
        cv2.imwrite(str(data / name / f"{i}.png"), cv2.cvtColor(few.images[i], cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    assert main(["augment", "--data", str(data), "--model", "finebirds", "--out", str(out), "--steps", "4",
                 "--preset", "higfa-judged", "--judge", str(assets("finebirds") / "guidance_robust.safetensors"),
                 "--threads", "1", "--no-progress"]) == 0
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["label"] for r in rows} == {world.class_names[i] for i in (0, 47)}
    for r in rows:
        assert r["status"] == "ok" and r["prompt"] == f"a photo of a {r['label'].split()[-1]}"
        assert r["trace_judge_confidence"] is not None
        assert cv2.imread(str(out / r["output"])).shape == (64, 64, 3)
