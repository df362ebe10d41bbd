"""Test-only loaders for the shipped SDXL and SD3 workflows (never shipped): the tiny in-process stand-ins of
tests/comfyui/tiny_families.py (ComfyUI's own SDXL / SD3 model classes at a CPU size) behind the outputs of the
stock CheckpointLoaderSimple / ControlNetLoader, which the test converters swap in. A file stand-in is impossible
for SDXL (CheckpointLoaderSimple detects SDXL only at its full 2.6 B-parameter layout); SD3 uses the same route
so both family workflows run alike. The CLIP is the tiny SD-style one (tokens and pooled vector 32 wide: the
width both tiny models take). On import this also writes random-init taesdxl / taesd3 files (TAESD's own format)
into the server's models/vae_approx when missing, so the workflows' stock VAE Loader finds them."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from . import tiny

FAMILIES = ["sdxl", "sd3"]


def _tiny_families():
    here = str(Path(__file__).resolve().parents[1])  # tests/comfyui: tiny_families.py and the testpack package
    if here not in sys.path:
        sys.path.insert(0, here)
    import tiny_families

    return tiny_families


@functools.lru_cache(maxsize=4)
def _family(name: str, seed: int):
    return _tiny_families().family(name, seed)


class TinyFamilyCheckpoint:
    CATEGORY = "HiGFA_test"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (FAMILIES,), "seed": ("INT", {"default": 0, "min": 0, "max": 1000})}}

    def load(self, family, seed):
        f = _family(family, seed)
        return f.model, tiny.tiny_clip(seed + 1), f.vae


class TinyFamilyControlNet:
    CATEGORY = "HiGFA_test"
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (FAMILIES,), "seed": ("INT", {"default": 0, "min": 0, "max": 1000})}}

    def load(self, family, seed):
        return (_family(family, seed).control_net,)


def write_taesd_files() -> None:
    """Only where this pack is installed as a custom node (a test server's base directory), never into the
    ComfyUI checkout that the in-process tests import."""
    import folder_paths

    base, here = Path(folder_paths.base_path), Path(__file__).resolve().parent
    nodes = base / "custom_nodes"
    if not nodes.is_dir() or not any(p.resolve() == here for p in nodes.iterdir()):
        return
    from comfy.taesd.taesd import Decoder, Encoder
    from safetensors.torch import save_file

    folder = Path(folder_paths.get_folder_paths("vae_approx")[0])
    folder.mkdir(parents=True, exist_ok=True)
    for name, channels in (("taesdxl", 4), ("taesd3", 16)):  # as tiny_families.write_taesd (not imported here:
        for part, net in (("encoder", Encoder), ("decoder", Decoder)):  # it imports this package by name)
            path = folder / f"{name}_{part}.safetensors"
            if not path.is_file():
                state = tiny.init_weights(net(latent_channels=channels), 5).state_dict()
                save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))


NODE_CLASS_MAPPINGS = {"HiGFATest_TinyFamilyCheckpoint": TinyFamilyCheckpoint,
                       "HiGFATest_TinyFamilyControlNet": TinyFamilyControlNet}
