"""higfa/world/scorer.py: the per-world scorer config, its images and the shipped scorers (no training here)."""

import json
from dataclasses import asdict

import numpy as np
import pytest

from higfa.world.catalog import assets, make_world
from higfa.training import evaluate
from higfa.world.scorer import SCORER, ScorerConfig, load_scorer, own_images, scorer_for_world
from higfa.world.train_common import for_world


def as_json(cfg: ScorerConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))  # tuples -> lists, as scorer_training.json stores them


def test_tinybirds_scorer_config_is_the_one_its_shipped_scorer_was_trained_with():
    cfg = scorer_for_world("tinybirds")
    assert cfg == ScorerConfig() and cfg.model_kwargs == {}
    shipped = json.loads((assets("tinybirds") / "scorer_training.json").read_text())["config"]
    # `world` and `model_kwargs` came after it was trained (tinybirds: the defaults above); every other field is its
    later = ("world", "model_kwargs")
    assert {k: v for k, v in as_json(cfg).items() if k not in later} == {k: v for k, v in shipped.items()
                                                                          if k not in later}


def test_finebirds_scorer_config_differs_from_the_oracle_and_guide_and_starts_after_the_oracles_images():
    world = for_world("finebirds")
    cfg = scorer_for_world("finebirds")
    assert cfg.world == "finebirds" and cfg.first_image == world.oracle_per_class == 500
    assert cfg.architecture not in (world.oracle_arch, world.guidance_arch, ScorerConfig().architecture)
    assert cfg.seed != world.seed
    assert scorer_for_world("finebirds", per_class=7).per_class == 7  # changes go over the world's defaults


def test_unknown_world_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown world 'nobirds'.*finebirds.*tinybirds"):
        scorer_for_world("nobirds")


def test_own_images_are_the_splits_images_after_the_first_ones():
    world = make_world("tinybirds")
    images, labels = own_images(world, first_image=2, per_class=1)
    split = world.split("train", 3)
    keep = np.tile(np.arange(3) == 2, world.num_classes)
    assert np.array_equal(images, split.images[keep]) and np.array_equal(labels, split.labels[keep])


def test_shipped_finebirds_scorer_matches_its_config_and_reads_real_test_images():
    folder = assets("finebirds")
    info = json.loads((folder / "scorer_training.json").read_text())
    assert info["config"] == as_json(scorer_for_world("finebirds"))
    scorer = load_scorer(folder / SCORER)
    assert scorer.architecture == "test_byobnet" and scorer.num_classes == 48
    test = make_world("finebirds").split("test", 5)  # 240 real test images; it reads ~0.95 of the full 2400
    assert evaluate(scorer, test.images, test.labels)["accuracy"] >= 0.85  # tinybirds' config read 0.27
