"""The shipped workflows' contents: which nodes, widget values and links each of workflows/*.json has,
as small Python specs. scripts/comfyui_workflows.py compiles them into the UI (LiteGraph) JSON the
front end loads; everything about sockets, widget order and layout comes from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from higfa.schedule import Schedule
from higfa.world.architecture import GUIDANCE_DEFAULT

CKPT = {"name": "v1-5-pruned-emaonly-fp16.safetensors", "directory": "checkpoints",
        "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
               "v1-5-pruned-emaonly-fp16.safetensors"}
CANNY = {"name": "control_v11p_sd15_canny_fp16.safetensors", "directory": "controlnet",
         "url": "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
                "control_v11p_sd15_canny_fp16.safetensors"}
CLASSIFIER = "fgvc_classifier.safetensors"
NEGATIVE = "blurry, low quality, deformed, cartoon, drawing, painting, text, watermark"
PROMPT = "a photo of a Black footed Albatross, a type of bird"
MODELS_NOTE = (f"Models: an SD 1.5 checkpoint ({CKPT['name']}) in models/checkpoints, a Canny ControlNet "
               f"({CANNY['name']}) in models/controlnet, and your fine-grained classifier in models/classifiers "
               "(<name>.safetensors + <name>.json sidecar: architecture, class_names, input_size, mean, std). "
               "Train one on your images with `higfa train-classifier`, or wrap a checkpoint you have with "
               "`higfa import-classifier` (docs/classifiers.md).\n"
               "Set the prompt and the sampler's target (class index or name) to the class you augment.")


# ----------------------------------------------------------------------------- specs
@dataclass
class Node:
    type: str
    column: int  # nodes are stacked top to bottom within their column, in the order they were added
    widgets: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    size: tuple[int, int] | None = None
    controls: dict[str, str] = field(default_factory=dict)  # "control after generate" modes (default fixed)
    models: list[dict] | None = None  # the files its widgets name, with download URLs (front end's missing models)


@dataclass
class Spec:
    name: str
    nodes: dict[str, Node] = field(default_factory=dict)
    links: list[tuple[str, str, str, str]] = field(default_factory=list)  # (from, output, to, input)

    def add(self, key: str, type: str, column: int, **widgets: Any) -> str:
        title, size, controls = widgets.pop("_title", None), widgets.pop("_size", None), widgets.pop("_control", {})
        self.nodes[key] = Node(type, column, widgets, title, size, controls, widgets.pop("_models", None))
        return key

    def link(self, src: str, output: str, dst: str, input: str) -> None:
        self.links.append((src, output, dst, input))


def _sd15_base(s: Spec, image_input: bool = True) -> None:
    s.add("note", "Note", -1, text=MODELS_NOTE, _size=(720, 130))
    s.add("ckpt", "CheckpointLoaderSimple", 0, ckpt_name=CKPT["name"])
    s.add("pos", "CLIPTextEncode", 1, text=PROMPT, _title="Positive prompt")
    s.add("neg", "CLIPTextEncode", 1, text=NEGATIVE, _title="Negative prompt")
    s.add("cnet", "ControlNetLoader", 0, control_net_name=CANNY["name"])
    s.add("clf", "HiGFA_ClassifierLoader", 0, classifier_name=CLASSIFIER)
    s.add("contour", "HiGFA_ContourTransform", 1, seed=0, variants=1)
    s.add("contour_view", "PreviewImage", 1, _title="Transformed contour")
    if image_input:
        s.add("image", "LoadImage", 0, image="higfa_example.png", _title="Real image of the class")
        s.link("image", "IMAGE", "contour", "image")
    s.link("ckpt", "CLIP", "pos", "clip")
    s.link("ckpt", "CLIP", "neg", "clip")
    s.link("contour", "contour", "contour_view", "images")


def _sampler(s: Spec, key: str, column: int, schedule: str, **widgets: Any) -> None:
    s.add(key, "HiGFA_Sampler", column, seed=42, steps=30, sampler_name="ddim", scheduler="ddim_uniform", denoise=1.0,
          target="0", **widgets)
    for src, out, inp in (("ckpt", "MODEL", "model"), ("pos", "CONDITIONING", "positive"),
                          ("neg", "CONDITIONING", "negative"), (schedule, "schedule", "schedule"),
                          ("latent", "LATENT", "latent_image"), ("cnet", "CONTROL_NET", "control_net"),
                          ("contour", "contour", "contour"), ("ckpt", "VAE", "vae"),
                          ("clf", "classifier", "classifier")):
        s.link(src, out, key, inp)


def preset_inputs(preset: str) -> dict[str, Any]:
    """A HiGFA Schedule node's widget values for a named preset: the values the preset runs with (what the
    node's preset dropdown fills in on the canvas), so a loaded workflow shows what it will do."""
    return Schedule.from_preset(preset).to_dict()


def preset_workflow(preset: str) -> Spec:
    """One of the four ablations of docs/method.md: the same graph, only the schedule preset differs."""
    s = Spec(f"higfa-preset-{preset}")
    _sd15_base(s)
    s.add("schedule", "HiGFA_Schedule", 2, **preset_inputs(preset))
    s.add("latent", "EmptyLatentImage", 2, width=512, height=512, batch_size=2)
    _sampler(s, "sampler", 3, "schedule")
    _decode_save_trace(s, "SaveImage", filename_prefix=f"higfa/{preset}")
    return s


def _decode_save_trace(s: Spec, save_type: str, **save_widgets) -> None:
    """The sampler's latent decoded and saved, its trace plot previewed (column 4)."""
    s.add("decode", "VAEDecode", 4)
    s.add("save", save_type, 4, **save_widgets)
    s.add("trace_view", "PreviewImage", 4, _title="HiGFA trace")
    s.link("sampler", "latent", "decode", "samples")
    s.link("ckpt", "VAE", "decode", "vae")
    s.link("decode", "IMAGE", "save", "images")
    s.link("sampler", "trace_plot", "trace_view", "images")


def batch_workflow() -> Spec:
    """A class-folder dataset in, N variants per image out, saved as a class-folder dataset + manifest."""
    s = Spec("higfa-batch-dataset")
    _sd15_base(s, image_input=False)
    s.nodes["note"].widgets["text"] = (
        "Augments a dataset: <ComfyUI input>/dataset/<class>/<images> -> <ComfyUI output>/higfa_dataset/<class>/ "
        "+ manifest.csv. 'single' mode makes the variants of one image per queue run (index increments: queue "
        "once per image); 'all' does the whole folder in one run. Keep variants = the latent batch size. "
        "The class folder names must be class names of the classifier.\n" + MODELS_NOTE.split("\n")[0])
    s.add("data", "HiGFA_LoadImageFolder", 0, folder="dataset", mode="single", index=0,
          _control={"index": "increment"})
    s.nodes["contour"].widgets["variants"] = 2
    s.add("schedule", "HiGFA_Schedule", 2, **preset_inputs("higfa"))
    s.add("latent", "EmptyLatentImage", 2, width=512, height=512, batch_size=2)
    _sampler(s, "sampler", 3, "schedule")
    _decode_save_trace(s, "HiGFA_SaveImageFolder", folder="higfa_dataset")
    s.link("data", "image", "contour", "image")
    s.link("data", "index", "contour", "index")
    s.link("data", "prompt", "pos", "text")
    s.link("data", "class_name", "sampler", "target")
    s.link("data", "class_name", "save", "class_name")
    s.link("data", "item_id", "save", "source")
    return s


def compare_workflow() -> Spec:
    """cfg vs higfa side by side: the same noise, sampler and sigmas (the GUIDER path)."""
    s = Spec("higfa-compare-cfg-vs-higfa")
    _sd15_base(s)
    s.add("noise", "RandomNoise", 2, noise_seed=42)
    s.add("ksampler", "KSamplerSelect", 2, sampler_name="ddim")
    s.add("sigmas", "BasicScheduler", 2, scheduler="ddim_uniform", steps=30, denoise=1.0)
    s.add("latent", "EmptyLatentImage", 2, width=512, height=512, batch_size=1)
    s.link("ckpt", "MODEL", "sigmas", "model")
    for side, preset in (("a", "cfg"), ("b", "higfa")):
        s.add(f"schedule_{side}", "HiGFA_Schedule", 3, **preset_inputs(preset), _title=f"Schedule: {preset}")
        s.add(f"guider_{side}", "HiGFA_Guider", 4, target="0", _title=f"Guider: {preset}")
        s.add(f"sample_{side}", "SamplerCustomAdvanced", 5)
        s.add(f"decode_{side}", "VAEDecode", 6)
        s.add(f"trace_{side}", "HiGFA_Trace", 6, _title=f"Trace: {preset}")
        for src, out, inp in (("ckpt", "MODEL", "model"), ("pos", "CONDITIONING", "positive"),
                              ("neg", "CONDITIONING", "negative"), (f"schedule_{side}", "schedule", "schedule"),
                              ("cnet", "CONTROL_NET", "control_net"), ("contour", "contour", "contour"),
                              ("ckpt", "VAE", "vae"), ("clf", "classifier", "classifier")):
            s.link(src, out, f"guider_{side}", inp)
        for src, out, inp in (("noise", "NOISE", "noise"), (f"guider_{side}", "GUIDER", "guider"),
                              ("ksampler", "SAMPLER", "sampler"), ("sigmas", "SIGMAS", "sigmas"),
                              ("latent", "LATENT", "latent_image")):
            s.link(src, out, f"sample_{side}", inp)
        s.link(f"sample_{side}", "output", f"decode_{side}", "samples")
        s.link("ckpt", "VAE", f"decode_{side}", "vae")
        s.link(f"guider_{side}", "GUIDER", f"trace_{side}", "guider")
        s.link(f"sample_{side}", "output", f"trace_{side}", "latent")
    s.add("stitch", "ImageStitch", 7, direction="right", match_image_size=True, spacing_width=8)
    s.add("save", "SaveImage", 7, filename_prefix="higfa/compare_cfg_vs_higfa",
          _title="cfg (left) vs higfa (right)")
    s.add("stitch_traces", "ImageStitch", 7, direction="down", match_image_size=True, spacing_width=8)
    s.add("traces_view", "PreviewImage", 7, _title="Traces: cfg (top), higfa (bottom)")
    s.link("decode_a", "IMAGE", "stitch", "image1")
    s.link("decode_b", "IMAGE", "stitch", "image2")
    s.link("stitch", "IMAGE", "save", "images")
    s.link("trace_a", "trace_plot", "stitch_traces", "image1")
    s.link("trace_b", "trace_plot", "stitch_traces", "image2")
    s.link("stitch_traces", "IMAGE", "traces_view", "images")
    return s


WORLD_GUIDED = "higfa-robust"  # a guided column of the world workflow (docs/method.md: why this preset)
WORLD_JUDGED = "higfa-judged"  # ... and the paper's mechanism with a judge: the column whose trace the workflow shows
WORLD_PRESETS = ("cfg", "contour", WORLD_GUIDED, WORLD_JUDGED)
WORLD_NOTE = (
    "Built-in tiny world: runs out of the box, no model files (HiGFA World Loader reads the models shipped "
    "with the pack). A real image of a species -> its transformed contour -> the same seed sampled four ways: "
    "cfg (family prompt only), contour (+ the contour ControlNet), higfa-robust (+ classifier guidance toward "
    "the species on 8 random views at a fixed push: the confidence neither modulates nor gates), higfa-judged "
    "(the same guide, and the loader's judge, a classifier that did not guide, whose confidence drives the "
    "ramp and the gate: its trace shows p_judge rising, w_cls fading and gated steps). Saved row: real | contour "
    "| cfg | contour | higfa-robust | higfa-judged.\n"
    "The text model knows the family ('a photo of a finch'), never the species: only the classifier knows the "
    "markings (crown patch, wing bar, eye ring, beak colour). Try another species (16: see the loader's "
    "class_names) or image index.")


def world_workflow() -> Spec:
    """The built-in world (docs/world.md), cfg vs contour vs higfa-robust vs higfa-judged (with the loader's
    judge) on one seed: no files needed."""
    s = Spec("higfa-world-compare")
    s.add("note", "Note", -1, text=WORLD_NOTE, _size=(720, 150))
    s.add("world", "HiGFA_WorldLoader", 0, path="")
    s.add("image", "HiGFA_WorldImage", 0, species="red-crowned finch", index=0, split="fewshot",
          _title="Real image of the species")
    s.add("pos", "HiGFA_WorldTextEncode", 1, text="a photo of a finch", _title="Positive: family prompt")
    s.add("neg", "HiGFA_WorldTextEncode", 1, text="", _title="Negative: empty")
    s.add("contour", "HiGFA_ContourTransform", 1, seed=0, variants=1)
    s.add("latent", "HiGFA_WorldEmptyLatent", 1, width=64, height=64, batch_size=1)
    s.link("world", "world", "image", "world")
    s.link("world", "world", "pos", "world")
    s.link("world", "world", "neg", "world")
    s.link("image", "prompt", "pos", "text")
    s.link("image", "image", "contour", "image")
    s.link("world", "VAE", "latent", "vae")
    row = [("image", "image"), ("contour", "contour")]
    last = 2 + len(WORLD_PRESETS)  # the column after the samplers
    for i, preset in enumerate(WORLD_PRESETS):
        s.add(f"schedule_{preset}", "HiGFA_Schedule", 2 + i, **preset_inputs(preset), _title=f"Schedule: {preset}")
        s.add(f"sampler_{preset}", "HiGFA_Sampler", 2 + i, seed=42, steps=30, sampler_name="ddim",
              scheduler="ddim_uniform", denoise=1.0, target="red-crowned finch", _title=f"Sampler: {preset}")
        s.add(f"decode_{preset}", "VAEDecode", last)
        for src, out, inp in (("world", "MODEL", "model"), ("pos", "CONDITIONING", "positive"),
                              ("neg", "CONDITIONING", "negative"), (f"schedule_{preset}", "schedule", "schedule"),
                              ("latent", "LATENT", "latent_image"), ("world", "CONTROL_NET", "control_net"),
                              ("contour", "contour", "contour"), ("world", "VAE", "vae"),
                              ("world", "classifier", "classifier"), ("image", "species", "target")):
            s.link(src, out, f"sampler_{preset}", inp)
        if GUIDANCE_DEFAULT == "tiny":  # the world's classifier path decodes with its tiny decoder (docs/speed.md)
            s.link("world", "guidance_vae", f"sampler_{preset}", "guidance_vae")
        if preset == WORLD_JUDGED:  # the loader's judge: a classifier that did not guide drives ramp and gate
            s.link("world", "judge", f"sampler_{preset}", "judge")
        s.link(f"sampler_{preset}", "latent", f"decode_{preset}", "samples")
        s.link("world", "VAE", f"decode_{preset}", "vae")
        row.append((f"decode_{preset}", "IMAGE"))
    left = row[0]
    for k, right in enumerate(row[1:]):  # one row: each stitch appends the next image on the right
        s.add(f"stitch_{k}", "ImageStitch", last + 1, direction="right", match_image_size=False, spacing_width=4)
        s.link(*left, f"stitch_{k}", "image1")
        s.link(*right, f"stitch_{k}", "image2")
        left = (f"stitch_{k}", "IMAGE")
    s.add("save", "SaveImage", last + 1, filename_prefix="higfa/world_compare",
          _title="real | contour | " + " | ".join(WORLD_PRESETS))
    s.link(*left, "save", "images")
    s.add("trace_view", "PreviewImage", last + 1, _title=f"HiGFA trace ({WORLD_JUDGED}: p_guide, p_judge, gated steps)")
    s.link(f"sampler_{WORLD_JUDGED}", "trace_plot", "trace_view", "images")
    return s


# ----------------------------------------------------------------------------- other model families (issue 26)
TAESD_URL = "https://github.com/madebyollin/taesd/raw/main/"
FAMILIES = {
    "sdxl": dict(
        ckpt={"name": "sd_xl_base_1.0.safetensors", "directory": "checkpoints",
              "url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
                     "sd_xl_base_1.0.safetensors"},
        canny={"name": "controlnet-canny-sdxl-1.0.fp16.safetensors", "directory": "controlnet",
               "url": "https://huggingface.co/diffusers/controlnet-canny-sdxl-1.0/resolve/main/"
                      "diffusion_pytorch_model.fp16.safetensors"},
        taesd="taesdxl", latent="EmptyLatentImage", size=1024, sampler=("euler", "normal"), steps=30, cfg=None,
        what="SDXL (ε-prediction, SDXL latents)"),
    "sd3": dict(
        ckpt={"name": "sd3_medium_incl_clips_t5xxlfp8.safetensors", "directory": "checkpoints",
              "url": "https://huggingface.co/stabilityai/stable-diffusion-3-medium/resolve/main/"
                     "sd3_medium_incl_clips_t5xxlfp8.safetensors"},
        canny={"name": "sd3_controlnet_canny_instantx.safetensors", "directory": "controlnet",
               "url": "https://huggingface.co/InstantX/SD3-Controlnet-Canny/resolve/main/"
                      "diffusion_pytorch_model.safetensors"},
        taesd="taesd3", latent="EmptySD3LatentImage", size=1024, sampler=("euler", "sgm_uniform"), steps=28,
        cfg=(5.0, 3.0, 5.0), what="SD3 medium (flow matching: CONST sampling, 16-channel latents, shift 3)"),
}


def family_note(name: str) -> str:
    f = FAMILIES[name]
    return (f"{f['what']}: the same HiGFA graph as the SD 1.5 workflows, with the family's checkpoint "
            f"({f['ckpt']['name']}) in models/checkpoints, its Canny ControlNet ({f['canny']['name']}) in "
            f"models/controlnet, and {f['taesd']} (TAESD's {f['taesd']}_encoder/_decoder.safetensors in "
            "models/vae_approx) as the classifier path's guidance_vae. HiGFA reads the family from the model "
            "(docs/method.md, 'Model families'): the same classifier_scale gives the same push at the same "
            "progress as on SD 1.5. Only SD 1.5 is measured (docs/quality.md); this family is tested on tiny stand-ins."
            "\nYour fine-grained classifier goes in models/classifiers (<name>.safetensors + <name>.json sidecar; "
            "`higfa train-classifier` or `higfa import-classifier` makes one, docs/classifiers.md). Set the prompt "
            "and the sampler's target (class index or name) to the class you augment.")


def family_workflow(name: str) -> Spec:
    """One guided sample of another model family (SDXL, SD3): checkpoint + Canny ControlNet via the pack's
    contour + classifier, the family's TAESD decoding the classifier path."""
    f = FAMILIES[name]
    s = Spec(f"higfa-{name}")
    s.add("note", "Note", -1, text=family_note(name), _size=(720, 150))
    s.add("ckpt", "CheckpointLoaderSimple", 0, ckpt_name=f["ckpt"]["name"], _models=[f["ckpt"]])
    s.add("pos", "CLIPTextEncode", 1, text=PROMPT, _title="Positive prompt")
    s.add("neg", "CLIPTextEncode", 1, text=NEGATIVE, _title="Negative prompt")
    s.add("cnet", "ControlNetLoader", 0, control_net_name=f["canny"]["name"], _models=[f["canny"]])
    s.add("gvae", "VAELoader", 0, vae_name=f["taesd"], _title=f"Guidance VAE ({f['taesd']})",
          _models=[{"name": f"{f['taesd']}_{part}.safetensors", "directory": "vae_approx",
                    "url": f"{TAESD_URL}{f['taesd']}_{part}.safetensors"} for part in ("encoder", "decoder")])
    s.add("clf", "HiGFA_ClassifierLoader", 0, classifier_name=CLASSIFIER)
    s.add("image", "LoadImage", 0, image="higfa_example.png", _title="Real image of the class")
    s.add("contour", "HiGFA_ContourTransform", 1, seed=0, variants=1)
    s.add("contour_view", "PreviewImage", 1, _title="Transformed contour")
    schedule = preset_inputs("higfa")
    if f["cfg"]:
        schedule.update(zip(("cfg", "cfg_lowconf", "cfg_highconf"), f["cfg"]))
    s.add("schedule", "HiGFA_Schedule", 2, **schedule)
    s.add("latent", f["latent"], 2, width=f["size"], height=f["size"], batch_size=1)
    s.add("sampler", "HiGFA_Sampler", 3, seed=42, steps=f["steps"], sampler_name=f["sampler"][0],
          scheduler=f["sampler"][1], denoise=1.0, target="0")
    for src, out, inp in (("ckpt", "MODEL", "model"), ("pos", "CONDITIONING", "positive"),
                          ("neg", "CONDITIONING", "negative"), ("schedule", "schedule", "schedule"),
                          ("latent", "LATENT", "latent_image"), ("cnet", "CONTROL_NET", "control_net"),
                          ("contour", "contour", "contour"), ("ckpt", "VAE", "vae"),
                          ("clf", "classifier", "classifier"), ("gvae", "VAE", "guidance_vae")):
        s.link(src, out, "sampler", inp)
    s.link("image", "IMAGE", "contour", "image")
    s.link("ckpt", "CLIP", "pos", "clip")
    s.link("ckpt", "CLIP", "neg", "clip")
    s.link("contour", "contour", "contour_view", "images")
    _decode_save_trace(s, "SaveImage", filename_prefix=f"higfa/{name}")
    return s


def specs() -> list[Spec]:
    return [*(preset_workflow(p) for p in ("cfg", "contour", "classifier-all-steps", "higfa")),
            batch_workflow(), compare_workflow(), world_workflow(), family_workflow("sdxl"), family_workflow("sd3")]
