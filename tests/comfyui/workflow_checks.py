"""Test-only views of a shipped UI workflow: `validate_ui` checks it against a server's /object_info, and
`ui_to_api` is the UI -> API (prompt) conversion the front end's graphToPrompt does, so tests can queue it.
The /object_info readers are the compiler's (scripts/comfyui_workflows.py). `to_test_prompt` swaps the
stock model loaders for the test pack's tiny ones (test_server, test_judge_nodes)."""

from __future__ import annotations

import uuid

from comfy_helpers import IMAGE, load_script, model_family

_WF = load_script("comfyui_workflows")
FRONTEND_ONLY = _WF.FRONTEND_ONLY
combo_options, extra_values, input_type = _WF.combo_options, _WF.extra_values, _WF.input_type
is_widget, options, ordered_inputs = _WF.is_widget, _WF.options, _WF.ordered_inputs


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
        wrong_int = kind == "INT" and not isinstance(value, int)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or wrong_int:
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
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs,
                                "_meta": {"title": n.get("title", n["type"])}}
    return prompt


FAMILY_LOADERS = {"CheckpointLoaderSimple": "HiGFATest_TinyFamilyCheckpoint",
                  "ControlNetLoader": "HiGFATest_TinyFamilyControlNet"}


def to_test_prompt(ui: dict, info: dict, seed: int) -> dict:
    """The workflow's API prompt with the stock model loaders swapped for the test pack's tiny ones
    (same output types), 64-px latents, and a fresh seed (identical prompts are served from cache).
    The built-in world's loader keeps its shipped models."""
    prompt = ui_to_api(ui, info)
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        family = model_family(inputs.get("ckpt_name") or inputs.get("control_net_name") or "")
        if kind in ("CheckpointLoaderSimple", "ControlNetLoader") and family:  # SDXL / SD3: testpack/families.py
            node.update(class_type=FAMILY_LOADERS[kind], inputs={"family": family, "seed": 0})
        elif kind == "CheckpointLoaderSimple":
            node.update(class_type="HiGFATest_TinyCheckpoint", inputs={"seed": 0})
        elif kind == "ControlNetLoader":
            node.update(class_type="HiGFATest_TinyControlNet", inputs={"seed": 3})
        elif kind in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inputs.update(width=IMAGE, height=IMAGE)
        elif kind in ("HiGFA_Sampler", "RandomNoise"):
            inputs["seed" if "seed" in inputs else "noise_seed"] = seed
    return prompt


def nodes_of(prompt: dict, kind: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == kind]
