"""Test-only custom nodes (never shipped): tiny stand-ins for the stock model loaders.

The test converter swaps CheckpointLoaderSimple / ControlNetLoader in the shipped workflows for
these (same output types; in the SDXL / SD3 workflows for `families`' loaders), so the workflows run on a
CPU in seconds. Built inside ComfyUI's inference mode, like real loaders, so the pack meets real
inference-tensor weights.
"""

from . import families, tiny


class TinyCheckpoint:
    CATEGORY = "HiGFA_test"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 1000})}}

    def load(self, seed):
        return tiny.tiny_model(seed), tiny.tiny_clip(seed + 1), tiny.tiny_vae(seed + 2)


class TinyControlNet:
    CATEGORY = "HiGFA_test"
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 3, "min": 0, "max": 1000})}}

    def load(self, seed):
        return (tiny.tiny_controlnet(seed),)


class TinyCLIPL:
    """For real-format checkpoints without a text encoder: a CLIP of SD 1.5's width (768)."""

    CATEGORY = "HiGFA_test"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 11, "min": 0, "max": 1000})}}

    def load(self, seed):
        return (tiny.tiny_clip_l(seed),)


NODE_CLASS_MAPPINGS = {"HiGFATest_TinyCheckpoint": TinyCheckpoint, "HiGFATest_TinyControlNet": TinyControlNet,
                       "HiGFATest_TinyCLIPL": TinyCLIPL, **families.NODE_CLASS_MAPPINGS}
families.write_taesd_files()  # the SDXL / SD3 workflows' VAE Loader reads taesdxl / taesd3 from models/vae_approx
