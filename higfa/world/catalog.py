"""The worlds this package ships, by name: each one's generator and its models folder.

    make_world("finebirds")      # the TinyBirds generator of that world
    assets("finebirds")          # higfa/world/assets_finebirds/ (a diffusers folder + classifiers, once trained)

`tinybirds` (birds.py) is the demo's world and the default everywhere; `finebirds` (finebirds.py) is the harder
one. A world folder's `world.json` names its world (`world.name`; absent: tinybirds), so `load_world(path)` builds
the right generator for any folder.
"""

from __future__ import annotations

from pathlib import Path

from . import birds
from .birds import TinyBirds
from .finebirds import finebirds

DEFAULT = "tinybirds"
WORLDS = ("tinybirds", "finebirds")


def make_world(name: str = DEFAULT, seed: int = 0, image_size: int = 64) -> TinyBirds:
    """The generator of world `name` (seeded; image_size px)."""
    if name == "tinybirds":
        return TinyBirds(seed=seed, image_size=image_size)
    if name == "finebirds":
        return finebirds(seed=seed, image_size=image_size)
    raise ValueError(f"unknown world {name!r}: choose one of {list(WORLDS)}")


def assets(name: str = DEFAULT) -> Path:
    """The shipped models folder of world `name` (it may be incomplete while the world is being trained)."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}: choose one of {list(WORLDS)}")
    return birds.model_path() if name == DEFAULT else birds.ASSETS.parent / f"assets_{name}"
