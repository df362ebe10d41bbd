"""What the classifier command tests share (test_classifier_commands, test_classifier_safety, test_recipe): a
species ImageFolder cut from the tiny world, and the tiny-classifier options for `higfa train-classifier`."""

from __future__ import annotations

from pathlib import Path

from higfa.jobs.dataset import save_image
from higfa.world.birds import TinyBirds

SPECIES = ["red-crowned finch", "plain jay", "spectacled dove"]
TINY = ["--architecture", "test_resnet", "--input-size", "32", "--batch-size", "4", "--mean", ".5", ".5", ".5",
        "--std", ".5", ".5", ".5", "--no-progress"]


def species_folder(root: Path, species=SPECIES, per_class: int = 4) -> Path:
    """Write `per_class` few-shot images of each species to root/<species>/imN.png (an ImageFolder); returns root."""
    world = TinyBirds()
    split = world.split("fewshot", per_class)
    for name in species:
        k = world.class_names.index(name)
        for n, img in enumerate(split.images[split.labels == k]):
            save_image(root / name / f"im{n}.png", img)
    return root
