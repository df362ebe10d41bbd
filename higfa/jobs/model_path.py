"""Which model a job means: the one place the CLI word `builtin` (the built-in tiny world's shipped models)
becomes a path. Everything below the jobs (backends, world) takes paths.

    folder = model_path(args.model)          # "builtin" -> higfa/world/assets; else the path as given
    info = world_info(args.model)            # world.json of a world folder (the built-in one), else None
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BUILTIN = "builtin"


def is_builtin(model: str | Path | None) -> bool:
    return model is not None and str(model) == BUILTIN


def builtin_folder() -> Path:
    """The built-in tiny world's diffusers folder (`higfa.world.birds.model_path()`)."""
    from ..world import birds

    return birds.model_path()


def model_path(model: str | Path) -> Path:
    """`model` as a path: 'builtin' is the built-in world's folder (which must hold its trained models),
    any other value the path as given (user-expanded; the loaders say what is wrong with it)."""
    if is_builtin(model):
        folder = builtin_folder()
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"the built-in world's models are not in {folder}: train them with "
                                    "`python -m higfa.world.train`, or pass --model a diffusers folder")
        return folder
    return Path(model).expanduser()


def world_info(model: str | Path) -> dict[str, Any] | None:
    """The `world.json` of a world model folder (the built-in world, or one `higfa train-world` wrote),
    else None (an SD model has none)."""
    try:
        folder = builtin_folder() if is_builtin(model) else Path(model).expanduser()
        return json.loads((folder / "world.json").read_text())
    except (OSError, ValueError):
        return None


def default_builtin_classifier() -> str | None:
    """The built-in world's guidance classifier, shipped beside its diffusers folder."""
    path = builtin_folder() / "guidance.safetensors"
    return str(path) if path.is_file() else None
