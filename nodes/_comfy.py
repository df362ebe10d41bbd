"""The one place the pack imports ComfyUI's node API (switch to a pinned `comfy_api.v0_0_x` here).

Only what ComfyUI 0.3.75 offers is used: newer keyword arguments (advanced=, search_aliases=) raise
TypeError there, and 0.3.75 never calls ComfyExtension.on_load. The one exception is `advanced(...)`, passed
only where the running ComfyUI's inputs take it.
"""

import inspect

from comfy_api.latest import ComfyExtension, io, ui

# Newer ComfyUI (the V3 `Input(..., advanced=True)`, Jan 2026; 0.33.0 has it) sends the flag in /object_info and
# its front end folds such inputs under "advanced inputs". 0.3.75's inputs have no such argument.
ADVANCED_INPUTS = "advanced" in inspect.signature(io.Float.Input.__init__).parameters


def advanced(flag: bool = True) -> dict:
    """Keyword arguments that mark an input advanced where ComfyUI supports it, none where it does not."""
    return {"advanced": True} if flag and ADVANCED_INPUTS else {}


CATEGORY = "HiGFA"

# Custom socket types: Python objects that flow between our nodes.
SCHEDULE = io.Custom("HIGFA_SCHEDULE")
CLASSIFIER = io.Custom("HIGFA_CLASSIFIER")
CONTOUR_RANGES = io.Custom("HIGFA_CONTOUR_RANGES")
WORLD = io.Custom("HIGFA_WORLD")  # the built-in world's text encoder and image generator (nodes/world.py)

# Largest image side, and pixels one node call may produce (images x variants x H x W; 2**26 is
# 4096 x 4096 x 4): a 6000 x 6000 photo with 4 variants otherwise takes about 4 GB of RAM.
MAX_IMAGE_SIDE = 4096
MAX_OUTPUT_PIXELS = 2**26


def check_image_size(height: int, width: int, what: str, count: int = 1) -> None:
    """ValueError naming the size and the fix when an image (or `count` outputs of that size) is too big."""
    if max(height, width) > MAX_IMAGE_SIDE or count * height * width > MAX_OUTPUT_PIXELS:
        raise ValueError(f"{what} is {width}x{height} px{f' x {count} outputs' if count > 1 else ''}: HiGFA nodes "
                         f"take images up to {MAX_IMAGE_SIDE} px a side and {MAX_OUTPUT_PIXELS // 2**20} M output "
                         f"pixels per run. Scale it down first (e.g. ImageScaleToTotalPixels) or use fewer variants")


__all__ = ["ADVANCED_INPUTS", "CATEGORY", "CLASSIFIER", "CONTOUR_RANGES", "ComfyExtension", "MAX_IMAGE_SIDE",
           "SCHEDULE", "WORLD", "advanced", "check_image_size", "io", "ui"]
