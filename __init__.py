"""ComfyUI entry point of the HiGFA node pack (the `higfa` core next to it needs no ComfyUI).

Only `comfy_entrypoint` (V3) and WEB_DIRECTORY: defining NODE_CLASS_MAPPINGS here would make
ComfyUI silently ignore comfy_entrypoint.
"""

import importlib.util

WEB_DIRECTORY = "./web"

# Tools such as pytest import the repository root as a package outside ComfyUI; the nodes are only
# loaded where ComfyUI's API exists (inside ComfyUI it always does, so real errors still surface).
if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
