#!/usr/bin/env python3
"""The shipped workflows, authored once as small Python specs.

`build(object_info)` turns each spec into the UI (LiteGraph 0.4) JSON the ComfyUI front end loads;
the files live in example_workflows/, where ComfyUI lists them as the pack's templates. The input
order, widget lists and output types come from a running ComfyUI's /object_info, so a spec only
names nodes, widget values and links. `ui_to_api` is the UI -> API (prompt) conversion the tests use
(the front end's graphToPrompt), and `validate_ui` checks a UI file against /object_info.

    python scripts/comfyui_workflows.py      # regenerate example_workflows/ (starts a temporary ComfyUI)
"""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "example_workflows"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
FRONTEND_ONLY = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")
# Room for the charts web/ draws on these nodes (at least CHART_HEIGHT in higfa_schedule.js / higfa_trace.js).
CHART_ROOM = {"HiGFA_Schedule": 200, "HiGFA_Sampler": 230, "HiGFA_Trace": 230}

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


@dataclass
class Spec:
    name: str
    nodes: dict[str, Node] = field(default_factory=dict)
    links: list[tuple[str, str, str, str]] = field(default_factory=list)  # (from, output, to, input)

    def add(self, key: str, type: str, column: int, **widgets: Any) -> str:
        title, size, controls = widgets.pop("_title", None), widgets.pop("_size", None), widgets.pop("_control", {})
        self.nodes[key] = Node(type, column, widgets, title, size, controls)
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
                          ("contour", "contour", "contour"), ("ckpt", "VAE", "vae"), ("clf", "classifier", "classifier")):
        s.link(src, out, key, inp)


def preset_workflow(preset: str) -> Spec:
    """One of the four ablations of docs/method.md: the same graph, only the schedule preset differs."""
    s = Spec(f"higfa-preset-{preset}")
    _sd15_base(s)
    s.add("schedule", "HiGFA_Schedule", 2, preset=preset)
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
    s.add("schedule", "HiGFA_Schedule", 2, preset="higfa")
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
        s.add(f"schedule_{side}", "HiGFA_Schedule", 3, preset=preset, _title=f"Schedule: {preset}")
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


WORLD_NOTE = (
    "Built-in tiny world: runs out of the box, no model files (HiGFA World Loader reads the models shipped "
    "with the pack). A real image of a species -> its transformed contour -> the same seed sampled three ways: "
    "cfg (family prompt only), contour (+ the contour ControlNet), higfa (+ confidence-gated classifier guidance "
    "toward the species). Saved row: real | contour | cfg | contour | higfa.\n"
    "The text model knows the family ('a photo of a finch'), never the species: only the classifier knows the "
    "markings (crown patch, wing bar, eye ring, beak colour). Try another species (16: see the loader's "
    "class_names) or image index.")


def world_workflow() -> Spec:
    """The built-in world (docs/world.md), cfg vs contour vs higfa on one seed: no files needed."""
    s = Spec("higfa-world-compare")
    s.add("note", "Note", -1, text=WORLD_NOTE, _size=(720, 130))
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
    for i, preset in enumerate(("cfg", "contour", "higfa")):
        s.add(f"schedule_{preset}", "HiGFA_Schedule", 2 + i, preset=preset, _title=f"Schedule: {preset}")
        s.add(f"sampler_{preset}", "HiGFA_Sampler", 2 + i, seed=42, steps=30, sampler_name="ddim",
              scheduler="ddim_uniform", denoise=1.0, target="red-crowned finch", _title=f"Sampler: {preset}")
        s.add(f"decode_{preset}", "VAEDecode", 5)
        for src, out, inp in (("world", "MODEL", "model"), ("pos", "CONDITIONING", "positive"),
                              ("neg", "CONDITIONING", "negative"), (f"schedule_{preset}", "schedule", "schedule"),
                              ("latent", "LATENT", "latent_image"), ("world", "CONTROL_NET", "control_net"),
                              ("contour", "contour", "contour"), ("world", "VAE", "vae"),
                              ("world", "classifier", "classifier"), ("image", "species", "target")):
            s.link(src, out, f"sampler_{preset}", inp)
        s.link(f"sampler_{preset}", "latent", f"decode_{preset}", "samples")
        s.link("world", "VAE", f"decode_{preset}", "vae")
        row.append((f"decode_{preset}", "IMAGE"))
    left = row[0]
    for k, right in enumerate(row[1:]):  # one row: each stitch appends the next image on the right
        s.add(f"stitch_{k}", "ImageStitch", 6, direction="right", match_image_size=False, spacing_width=4)
        s.link(*left, f"stitch_{k}", "image1")
        s.link(*right, f"stitch_{k}", "image2")
        left = (f"stitch_{k}", "IMAGE")
    s.add("save", "SaveImage", 6, filename_prefix="higfa/world_compare",
          _title="real | contour | cfg | contour | higfa")
    s.link(*left, "save", "images")
    s.add("trace_view", "PreviewImage", 6, _title="HiGFA trace (higfa)")
    s.link("sampler_higfa", "trace_plot", "trace_view", "images")
    return s


def specs() -> list[Spec]:
    return [*(preset_workflow(p) for p in ("cfg", "contour", "classifier-all-steps", "higfa")),
            batch_workflow(), compare_workflow(), world_workflow()]


# ----------------------------------------------------------------------------- /object_info helpers
def ordered_inputs(info: dict) -> list[tuple[str, list]]:
    """(name, spec) in the node's input order: required, then optional."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    out = []
    for group in ("required", "optional"):
        for name in order.get(group, []):
            out.append((name, info["input"][group][name]))
    return out


def input_type(spec: list) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec: list) -> bool:
    return input_type(spec) in WIDGET_TYPES and not options(spec).get("forceInput")


def extra_values(name: str, spec: list) -> int:
    """Widget values the front end stores after this one: the seed 'control after generate' mode,
    and the upload button of image loaders."""
    opts, kind = options(spec), input_type(spec)
    control = opts.get("control_after_generate") or (kind == "INT" and name in ("seed", "noise_seed"))
    return int(bool(control)) + int(bool(opts.get("image_upload")))


def combo_options(spec: list) -> list:
    return spec[0] if isinstance(spec[0], list) else options(spec).get("options", [])


# ----------------------------------------------------------------------------- spec -> UI JSON
def to_ui(spec: Spec, object_info: dict) -> dict:
    ids = {key: i + 1 for i, key in enumerate(spec.nodes)}
    nodes, links = {}, []
    for key, n in spec.nodes.items():
        node = {"id": ids[key], "type": n.type, "pos": [0, 0], "size": list(n.size or (340, 120)), "flags": {},
                "order": 0, "mode": 0, "inputs": [], "outputs": [], "properties": {"Node name for S&R": n.type}}
        if n.title:
            node["title"] = n.title
        if n.type in FRONTEND_ONLY:
            node["widgets_values"] = [n.widgets["text"]]
            node["color"], node["bgcolor"] = "#432", "#653"
            nodes[key] = node
            continue
        info = object_info[n.type]
        unknown = set(n.widgets) - {name for name, _ in ordered_inputs(info)}
        if unknown:
            raise ValueError(f"{spec.name}: {n.type} has no inputs {sorted(unknown)}")
        values = []
        for name, ispec in ordered_inputs(info):
            if not is_widget(ispec):
                node["inputs"].append({"name": name, "type": input_type(ispec), "link": None})
                continue
            values.append(n.widgets.get(name, options(ispec).get("default", _first(ispec))))
            for _ in range(extra_values(name, ispec)):
                values.append("image" if options(ispec).get("image_upload") else n.controls.get(name, "fixed"))
        node["widgets_values"] = values
        node["outputs"] = [{"name": name, "type": t, "links": [], "slot_index": i}
                           for i, (name, t) in enumerate(zip(info["output_name"], info["output"]))]
        node["properties"].update({"cnr_id": "higfa", "ver": "0.1.0"} if n.type.startswith("HiGFA_")
                                  else {"cnr_id": "comfy-core", "ver": "0.3.75"})
        model = {"CheckpointLoaderSimple": CKPT, "ControlNetLoader": CANNY}.get(n.type)
        if model:
            node["properties"]["models"] = [model]
        nodes[key] = node
    for link_id, (src, out, dst, inp) in enumerate(spec.links, start=1):
        a, b = nodes[src], nodes[dst]
        slot = next(i for i, o in enumerate(a["outputs"]) if o["name"] == out)
        t = a["outputs"][slot]["type"]
        target = next((i for i, x in enumerate(b["inputs"]) if x["name"] == inp), None)
        if target is None:  # a widget driven by a link: it gets a socket too, and keeps its widget value
            b["inputs"].append({"name": inp, "type": t, "widget": {"name": inp}, "link": None})
            target = len(b["inputs"]) - 1
        b["inputs"][target]["link"] = link_id
        a["outputs"][slot]["links"].append(link_id)
        links.append([link_id, a["id"], slot, b["id"], target, t])
    for order, key in enumerate(_topological(spec)):
        nodes[key]["order"] = order
    _layout(spec, nodes, object_info)
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"higfa/example_workflows/{spec.name}")), "revision": 0, "last_node_id": len(nodes), "last_link_id": len(links),
            "nodes": list(nodes.values()), "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.6, "offset": [80, 260]}}, "version": 0.4}


def _layout(spec: Spec, nodes: dict, object_info: dict) -> None:
    """Columns 380 px apart, nodes stacked in each column at their estimated height; notes on top."""
    bottom: dict[int, int] = {}
    for key, n in spec.nodes.items():
        node = nodes[key]
        if n.column < 0:
            node["pos"] = [20, -40 - node["size"][1]]
            continue
        if not n.size:
            node["size"] = _size(n.type, node, object_info.get(n.type))
        y = bottom.get(n.column, 0)
        node["pos"] = [20 + 380 * n.column, y]
        bottom[n.column] = y + node["size"][1] + 40


def _size(type_: str, node: dict, info: dict | None) -> list[int]:
    """Roughly what the front end draws: a row per socket, a row per widget, room for text and images."""
    if type_ in ("PreviewImage", "SaveImage"):
        return [340, 300]
    rows = max(len(node["inputs"]), len(node["outputs"]))
    height = 40 + 22 * rows + 26 * len(node.get("widgets_values", [])) + CHART_ROOM.get(type_, 0)
    for _, spec in ordered_inputs(info) if info else []:
        if options(spec).get("multiline"):
            height += 90
        if options(spec).get("image_upload"):
            height += 240
    return [340, height]


def _first(ispec: list):
    opts = combo_options(ispec)
    return opts[0] if opts else None


def _topological(spec: Spec) -> list[str]:
    deps = {k: {src for src, _, dst, _ in spec.links if dst == k} for k in spec.nodes}
    done: list[str] = []
    while len(done) < len(deps):
        ready = [k for k in deps if k not in done and deps[k] <= set(done)]
        if not ready:
            raise ValueError(f"{spec.name}: the graph has a cycle")
        done += ready
    return done


def build(object_info: dict) -> dict[str, dict]:
    return {s.name: to_ui(s, object_info) for s in specs()}


# ----------------------------------------------------------------------------- checks and UI -> API
def validate_ui(ui: dict, object_info: dict) -> list[str]:
    """Problems of a UI workflow against /object_info (empty = fine): node types, widget counts,
    widget values (type, range, combo membership; model-file combos excepted), link types, and
    required inputs left unconnected."""
    problems = []
    try:
        uuid.UUID(str(ui.get("id", uuid.uuid4())))
    except ValueError:
        problems.append(f"workflow id {ui['id']!r} is not a UUID (the front end's schema refuses it)")
    by_id = {n["id"]: n for n in ui["nodes"]}
    for n in ui["nodes"]:
        where = f"node {n['id']} ({n['type']})"
        if n["type"] in FRONTEND_ONLY:
            continue
        info = object_info.get(n["type"])
        if info is None:
            problems.append(f"{where}: no such node type in this ComfyUI")
            continue
        values = list(n.get("widgets_values") or [])
        widgets = [(name, s) for name, s in ordered_inputs(info) if is_widget(s)]
        expected = sum(1 + extra_values(name, s) for name, s in widgets)
        if len(values) != expected:
            problems.append(f"{where}: {len(values)} widget values, expected {expected}")
            continue
        linked = {i["name"] for i in n["inputs"] if i.get("link") is not None}
        for name, s in widgets:
            value = values.pop(0)
            del values[:extra_values(name, s)]
            problems += [f"{where}: {name}: {p}" for p in _check_value(name, value, s)]
        for name, s in ordered_inputs(info):
            required = name in info["input"].get("required", {})
            if required and not is_widget(s) and name not in linked:
                problems.append(f"{where}: required input '{name}' is not connected")
        for i in n["inputs"]:
            if i.get("link") is None:
                continue
            link = next((lk for lk in ui["links"] if lk[0] == i["link"]), None)
            if link is None or link[3] != n["id"]:
                problems.append(f"{where}: input '{i['name']}' refers to a missing link {i['link']}")
                continue
            src = by_id[link[1]]
            src_type = object_info.get(src["type"], {}).get("output", [None] * (link[2] + 1))[link[2]]
            spec = dict(ordered_inputs(info)).get(i["name"])
            if spec is None:
                problems.append(f"{where}: linked input '{i['name']}' does not exist")
            elif src_type is not None and input_type(spec) not in ("*", src_type):
                problems.append(f"{where}: input '{i['name']}' ({input_type(spec)}) is linked to a {src_type} output")
    return problems


def _check_value(name: str, value, spec: list) -> list[str]:
    kind, opts = input_type(spec), options(spec)
    if kind == "COMBO":
        choices = combo_options(spec)
        model_file = isinstance(value, str) and value.endswith((".safetensors", ".pth", ".ckpt", ".png"))
        return [] if value in choices or model_file else [f"{value!r} is not one of {choices[:8]}"]
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{value!r} is not a boolean"]
    if kind == "STRING":
        return [] if isinstance(value, str) else [f"{value!r} is not a string"]
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and not isinstance(value, int)):
            return [f"{value!r} is not a {kind}"]
        if "min" in opts and value < opts["min"] or "max" in opts and value > opts["max"]:
            return [f"{value} is outside [{opts.get('min')}, {opts.get('max')}]"]
    return []


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """The API prompt for a UI workflow (what the front end posts): widget values by name, links as
    [node id, output slot]; frontend-only nodes and muted nodes (mode 2) are dropped."""
    links = {lk[0]: lk for lk in ui["links"]}
    prompt = {}
    for n in ui["nodes"]:
        if n["type"] in FRONTEND_ONLY or n.get("mode", 0) == 2:
            continue
        info = object_info[n["type"]]
        values, inputs = list(n.get("widgets_values") or []), {}
        for name, s in ordered_inputs(info):
            if is_widget(s):
                inputs[name] = values.pop(0)
                del values[:extra_values(name, s)]
        for i in n["inputs"]:
            if i.get("link") is not None:
                lk = links[i["link"]]
                inputs[i["name"]] = [str(lk[1]), lk[2]]
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs, "_meta": {"title": n.get("title", n["type"])}}
    return prompt


def write(object_info: dict, out: Path = OUT) -> list[Path]:
    out.mkdir(exist_ok=True)
    paths = []
    for name, ui in build(object_info).items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(ui, indent=1) + "\n")
        paths.append(path)
    return paths


def _main() -> None:
    import tempfile
    import urllib.request

    sys.path.insert(0, str(ROOT / "scripts"))
    import comfyui

    comfyui.install()
    with tempfile.TemporaryDirectory(prefix="higfa-workflows-") as tmp:
        base = comfyui.prepare_base(Path(tmp))
        port = comfyui.free_port()
        log = Path(tmp) / "comfyui.log"
        proc = comfyui.start(base, port, log)
        try:
            url = f"http://127.0.0.1:{port}"
            comfyui.wait_ready(url, proc, log)
            info = json.load(urllib.request.urlopen(url + "/object_info"))
        finally:
            comfyui.stop(proc)
    for path in write(info):
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    _main()
