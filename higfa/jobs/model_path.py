"""Which model a job means: the one place the CLI words for the shipped worlds' models become a path. `builtin`
is the demo's world (tinybirds); a world's own name (`tinybirds`, `finebirds`: higfa.world.catalog.WORLDS) is that
world. Everything below the jobs (backends, world) takes paths.

    folder = model_path(args.model)          # "builtin" -> higfa/world/assets; "finebirds" -> assets_finebirds
    info = world_info(args.model)            # world.json of a world folder (a built-in one), else None
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BUILTIN = "builtin"


def builtin_world(model: str | Path | None) -> str | None:
    """The shipped world `model` names ('builtin': the default one), else None (a path)."""
    from ..world.catalog import DEFAULT, WORLDS

    if model is None:
        return None
    return DEFAULT if str(model) == BUILTIN else str(model) if str(model) in WORLDS else None


def is_builtin(model: str | Path | None) -> bool:
    return builtin_world(model) is not None


def builtin_folder(model: str | Path = BUILTIN) -> Path:
    """The diffusers folder of the shipped world `model` names ('builtin': tinybirds, higfa/world/assets)."""
    from ..world.catalog import assets

    return assets(builtin_world(model) or "")


def model_path(model: str | Path) -> Path:
    """`model` as a path: 'builtin' is the built-in world's folder (which must hold its trained models),
    any other value the path as given (user-expanded; the loaders say what is wrong with it)."""
    if is_builtin(model):
        folder = builtin_folder(model)
        if not (folder / "model_index.json").is_file():
            name = builtin_world(model)
            raise FileNotFoundError(f"the {name} world's models are not in {folder}: train them with "
                                    f"`python -m higfa.world.train --world {name} --resume` (make train-world "
                                    f"WORLD={name}), or pass --model a diffusers folder")
        return folder
    return Path(model).expanduser()


def world_info(model: str | Path) -> dict[str, Any] | None:
    """The `world.json` of a world model folder (the built-in world, or one `higfa train-world` wrote),
    else None (an SD model has none)."""
    try:
        folder = builtin_folder(model) if is_builtin(model) else Path(model).expanduser()
        return json.loads((folder / "world.json").read_text())
    except (OSError, ValueError):
        return None


def default_builtin_classifier(model: str | Path = BUILTIN) -> str | None:
    """The guidance classifier of the shipped world `model` names, beside its diffusers folder."""
    path = builtin_folder(model) / "guidance.safetensors"
    return str(path) if path.is_file() else None
