#!/usr/bin/env python3
"""The LiteGraph compiler for the shipped workflows: each spec of scripts/workflow_specs.py becomes the UI
(LiteGraph 0.4) JSON the ComfyUI front end loads, in workflows/, where ComfyUI lists them as the pack's
templates. The input order, widget lists and output types come from a running ComfyUI's /object_info
(and the core nodes' version from its /system_stats), so a spec only names nodes, widget values and links.

    python scripts/comfyui_workflows.py      # or `make workflows`: regenerate workflows/ (starts a temporary ComfyUI)
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workflow_specs import CANNY, CKPT, Spec, specs  # noqa: E402  (scripts/ is not a package)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "workflows"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
FRONTEND_ONLY = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")
# Room for the charts web/ draws on these nodes (at least CHART_HEIGHT in higfa_schedule.js / higfa_trace.js).
CHART_ROOM = {"HiGFA_Schedule": 200, "HiGFA_Sampler": 230, "HiGFA_Trace": 230}
COMFY_VERSION = "0.3.75"  # the ComfyUI the shipped files were generated with (CI's); `write` records the real one


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
def to_ui(spec: Spec, object_info: dict, comfy_version: str = COMFY_VERSION) -> dict:
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
                                  else {"cnr_id": "comfy-core", "ver": comfy_version})
        models = n.models or [m for m in [{"CheckpointLoaderSimple": CKPT, "ControlNetLoader": CANNY}.get(n.type)] if m]
        if models:
            node["properties"]["models"] = models
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
    # The id string keeps the files' original location: a workflow's id never changes.
    workflow_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"higfa/example_workflows/{spec.name}"))
    return {"id": workflow_id, "revision": 0, "last_node_id": len(nodes), "last_link_id": len(links),
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


def build(object_info: dict, comfy_version: str = COMFY_VERSION) -> dict[str, dict]:
    return {s.name: to_ui(s, object_info, comfy_version) for s in specs()}


def write(object_info: dict, out: Path = OUT, comfy_version: str = COMFY_VERSION) -> list[Path]:
    out.mkdir(exist_ok=True)
    paths = []
    for name, ui in build(object_info, comfy_version).items():
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
            version = json.load(urllib.request.urlopen(url + "/system_stats"))["system"]["comfyui_version"]
        finally:
            comfyui.stop(proc)
    for path in write(info, comfy_version=version):
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    _main()
