"""The one place the pack imports ComfyUI's node API (switch to a pinned `comfy_api.v0_0_x` here).

Only what ComfyUI 0.3.75 offers is used: newer keyword arguments (advanced=, search_aliases=) raise
TypeError there, and 0.3.75 never calls ComfyExtension.on_load.
"""

from comfy_api.latest import ComfyExtension, io, ui

CATEGORY = "HiGFA"

# Custom socket types: Python objects that flow between our nodes.
SCHEDULE = io.Custom("HIGFA_SCHEDULE")
CLASSIFIER = io.Custom("HIGFA_CLASSIFIER")
CONTOUR_RANGES = io.Custom("HIGFA_CONTOUR_RANGES")
WORLD = io.Custom("HIGFA_WORLD")  # the built-in world's text encoder and image generator (nodes/world.py)

__all__ = ["CATEGORY", "CLASSIFIER", "CONTOUR_RANGES", "ComfyExtension", "SCHEDULE", "WORLD", "io", "ui"]
