"""The built-in tiny world's nodes: HiGFA World Loader, World Text Encode, World Image, World Empty
Latent (docs/world.md, "In ComfyUI"). The ComfyUI model adapters they hand out (MODEL, VAE,
CONTROL_NET) are in nodes/world_adapters.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import comfy.model_management as mm
import folder_paths
import numpy as np
import torch

from ..higfa.classifier import Classifier, load_classifier
from ..higfa.world.birds import SPLITS, TinyBirds, model_path
from ..higfa.world.catalog import DEFAULT, WORLDS, assets
from ..higfa.world.models import JUDGE_FILE, WorldModels
from ._comfy import CATEGORY, CLASSIFIER, WORLD, io
from ._paths import ALLOWED_ROOTS_ENV, confine
from .world_adapters import load


# ----------------------------------------------------------------------------- the world's text side
@dataclass
class LoadedWorld:
    """What HiGFA World Loader hands to the text and image nodes: a view of the world's loaded models (the
    core's `WorldModels`, whose `Components` hold the word-level tokenizer and CLIP text encoder: family words
    only, species words are unknown), with the guidance classifier whose class names are the species."""

    models: WorldModels

    @property
    def world(self) -> TinyBirds:
        return self.models.world

    @property
    def classifier(self) -> Classifier:
        return self.models.guidance

    @property
    def path(self) -> Path:
        return self.models.path

    @property
    def class_names(self) -> list[str]:
        return self.world.class_names

    @property
    def device(self) -> torch.device:
        return next(self.models.text_encoder.parameters()).device

    def encode(self, text: str) -> torch.Tensor:
        """[1, L, D]: the core's prompt encoder (`WorldModels.encode_prompts`), so ComfyUI and `make demo`
        encode alike."""
        return self.models.encode_prompts([text])


# The world's judge, JUDGE_FILE (higfa.world.models: the demo's too). It never guides when the loader's `classifier`
# does; on tinybirds it is the harder one to fool of the two, on finebirds it is fooled as much as the guide
# (docs/quality.md "Judge probe").


@lru_cache(maxsize=2)
def _world_judge(path: str, stamp: tuple) -> Classifier | None:
    """The world folder's judge (JUDGE_FILE), None when the folder has none; `stamp` (size, mtime) reloads a
    retrained one. Made outside inference mode: the guider runs it inside its own gradient-free forward."""
    file = Path(path) / JUDGE_FILE
    if not file.is_file():
        return None
    with torch.inference_mode(False):
        clf = load_classifier(file).float()
    clf.source = JUDGE_FILE  # how a trace names it (nodes/cfg_guider._judge_name)
    return clf


def world_judge(root: Path) -> Classifier | None:
    file = root / JUDGE_FILE
    stamp = (file.stat().st_size, file.stat().st_mtime_ns) if file.is_file() else None
    return _world_judge(str(root), stamp)


@lru_cache(maxsize=1)
def _builtin_classifier() -> Classifier:
    """The built-in world's guidance classifier: names species for HiGFA World Image without a world."""
    with torch.inference_mode(False):
        return load_classifier(model_path() / "guidance.safetensors").float()


# ----------------------------------------------------------------------------- loading
def resolve_path(path: str, world: str = DEFAULT) -> Path:
    """'' -> the shipped folder of `world` (tinybirds, finebirds: higfa.world.catalog); otherwise a folder inside
    ComfyUI's models folder (relative, or absolute there), a shipped world's own folder, or a root in
    HIGFA_ALLOWED_ROOTS. Checked before anything under it is listed or read."""
    if world not in WORLDS:
        raise ValueError(f"HiGFA World Loader's world {world!r}: choose one of {list(WORLDS)}")
    text = (path or "").strip()
    if not text:
        return assets(world)
    return confine(text, folder_paths.models_dir, "HiGFA World Loader's path",
                   extra=tuple(assets(w) for w in WORLDS))[0]


# ----------------------------------------------------------------------------- nodes
class HiGFAWorldLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_WorldLoader",
            display_name="HiGFA World Loader (built-in tiny world)",
            category=f"{CATEGORY}/world",
            description="Loads a tiny world shipped with the pack (no downloads): a 64 px 'tiny birds' diffusion "
                        "model that knows bird families but not species, its contour ControlNet, a 4x VAE, the "
                        "few-shot guidance classifier of its species and a judge. tinybirds (the default): 16 "
                        "species, 8-channel latent; finebirds: 48 species, 16-channel latent. Use HiGFA World "
                        "Empty Latent for its latents (64 px = 16x16 latent).",
            inputs=[io.String.Input("path", default="", optional=True,
                                    tooltip="Empty: the built-in world. Otherwise a folder written by `higfa "
                                            "train-world --out`, inside ComfyUI's models folder (other folders "
                                            f"only when the server's owner lists them in {ALLOWED_ROOTS_ENV})."),
                    io.Combo.Input("world", options=list(WORLDS), default=DEFAULT, optional=True,
                                   tooltip="Which shipped world an empty path loads: tinybirds (the demo's, 16 "
                                           "species) or finebirds (48 species told apart by combinations of "
                                           "subtler markings, more nuisance; docs/world.md). A path overrides it: "
                                           "the folder's world.json names its world.")],
            outputs=[io.Model.Output(display_name="MODEL"), io.Vae.Output(display_name="VAE"),
                     io.ControlNet.Output(display_name="CONTROL_NET", tooltip="The contour ControlNet (Canny "
                                                                              "edges at 64 px, white on black)."),
                     CLASSIFIER.Output(display_name="classifier", tooltip="The few-shot guidance classifier "
                                                                          "(10 real images per species)."),
                     WORLD.Output(display_name="world", tooltip="Text encoder and images of this world: "
                                                                "HiGFA World Text Encode, HiGFA World Image."),
                     io.String.Output(display_name="class_names",
                                      tooltip="The world's species (tinybirds 16, finebirds 48), one per line."),
                     io.Vae.Output(display_name="guidance_vae",
                                   tooltip="The world's distilled tiny decoder (tiny_decoder/, a TAESD-architecture "
                                           "AutoencoderTiny) for HiGFA Guider / Sampler's guidance_vae input: the "
                                           "classifier path decodes with it (docs/speed.md). A world folder "
                                           "without one gives its own VAE here (the same as leaving the input "
                                           "empty), so the output always decodes."),
                     CLASSIFIER.Output(display_name="judge",
                                       tooltip="A classifier that did not guide, for HiGFA Guider / Sampler's judge "
                                               "input beside this loader's classifier: the world's few-shot guide "
                                               "tuned by `higfa tune-classifier --adversarial` (guidance_robust; on "
                                               "tinybirds harder to fool than the guide, on finebirds not). Its "
                                               "confidence drives the ramp and the gate "
                                               "(preset higfa-judged). None when the world folder has none.")],
        )

    @classmethod
    def fingerprint_inputs(cls, path: str = "", world: str = DEFAULT, **_):
        # Reload when the world is retrained (`higfa train-world`), not only when the path changes.
        root = resolve_path(path, world)
        files = sorted(root.rglob("*")) if root.is_dir() else []
        return repr([(str(f.relative_to(root)), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file()])

    @classmethod
    def execute(cls, path: str = "", world: str = DEFAULT) -> io.NodeOutput:
        root = resolve_path(path, world)
        model, vae, control, tiny, m = load(root)
        tiny = vae if tiny is None else tiny  # never None: a stock VAE Decode fed by this output must work
        world = LoadedWorld(m)
        return io.NodeOutput(model, vae, control, m.guidance, world, "\n".join(world.class_names), tiny,
                             world_judge(root))


class HiGFAWorldTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_WorldTextEncode",
            display_name="HiGFA World Text Encode",
            category=f"{CATEGORY}/world",
            description="CONDITIONING from the built-in world's text encoder. It knows 'a photo of a finch / "
                        "warbler / jay / dove' (the families), not the species: other words are unknown tokens. "
                        "Use '' as the negative prompt.",
            inputs=[WORLD.Input("world", tooltip="From HiGFA World Loader."),
                    io.String.Input("text", default="a photo of a finch",
                                    tooltip="A family prompt, e.g. HiGFA World Image's prompt output; '' for the "
                                            "negative (unconditional) branch. At most 14 words.")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, world: LoadedWorld, text: str) -> io.NodeOutput:
        cond = world.encode(text).to(mm.intermediate_device())
        return io.NodeOutput([[cond, {}]])


class HiGFAWorldImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_WorldImage",
            display_name="HiGFA World Image",
            category=f"{CATEGORY}/world",
            description="A real image of one species, drawn by the procedural world (no input files): the source "
                        "of the contour, with the species name (the classifier's target) and its family prompt.",
            inputs=[io.String.Input("species", default="red-crowned finch",
                                    tooltip="A species name (e.g. 'spectacled warbler') or its index 0-15."),
                    io.Int.Input("index", default=0, min=0, max=9999,
                                 tooltip="Which image of that species in the split (the fewshot split has the "
                                         "10 'real' images the guidance classifier was trained on: 0-9)."),
                    io.Combo.Input("split", options=list(SPLITS), default="fewshot",
                                   tooltip="fewshot: the few real images per species. train / test / val: other, "
                                           "disjoint images."),
                    WORLD.Input("world", optional=True, tooltip="From HiGFA World Loader (default: the built-in "
                                                                "world's generator).")],
            outputs=[io.Image.Output(display_name="image", tooltip="[1,64,64,3]"),
                     io.String.Output(display_name="species", tooltip="The species name: connect to the "
                                                                      "sampler's target."),
                     io.String.Output(display_name="prompt", tooltip="Its family prompt, e.g. 'a photo of a "
                                                                     "finch': connect to HiGFA World Text Encode."),
                     io.Int.Output(display_name="species_index")],
        )

    @classmethod
    def execute(cls, species: str, index: int, split: str, world: LoadedWorld | None = None) -> io.NodeOutput:
        birds = world.world if world is not None else TinyBirds()
        # The classifier's own matcher (Classifier.resolve): names as the sampler's target resolves them.
        label = (world.classifier if world is not None else _builtin_classifier()).resolve(str(species).strip())
        labels, seeds = birds.split_seeds(split, index + 1)
        seed = int(seeds[labels == label][index])
        image = birds.render(label, seed, masks=False).image
        tensor = torch.from_numpy(np.ascontiguousarray(image)).float().div(255.0).unsqueeze(0)
        return io.NodeOutput(tensor.to(mm.intermediate_device()), birds.class_names[label], birds.prompt(label), label)


class HiGFAWorldEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_WorldEmptyLatent",
            display_name="HiGFA World Empty Latent",
            category=f"{CATEGORY}/world",
            description="An empty latent sized for a VAE: its channels and down-sampling (the built-in world's: 8 "
                        "channels, 4x, so 64 px is 16x16; EmptyLatentImage assumes SD's 4 channels and 8x).",
            inputs=[io.Vae.Input("vae", tooltip="The VAE that will decode it (HiGFA World Loader's)."),
                    io.Int.Input("width", default=64, min=16, max=4096, step=16, tooltip="Image width in pixels."),
                    io.Int.Input("height", default=64, min=16, max=4096, step=16, tooltip="Image height in pixels."),
                    io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Images per run.")],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, vae, width: int, height: int, batch_size: int) -> io.NodeOutput:
        ratio = vae.spacial_compression_encode()
        shape = (batch_size, vae.latent_channels, height // ratio, width // ratio)
        return io.NodeOutput({"samples": torch.zeros(shape, device=mm.intermediate_device())})


NODES = [HiGFAWorldLoader, HiGFAWorldTextEncode, HiGFAWorldImage, HiGFAWorldEmptyLatent]
