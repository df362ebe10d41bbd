"""A real ComfyUI server with the pack: /object_info, templates, the /higfa/schedule route, every
shipped workflow validated and run (tiny models swapped in), and errors that come back as node errors."""

from __future__ import annotations

import csv
import json
import urllib.request

import cv2
import pytest

import workflow_checks as WC
from comfy_helpers import CLASSES, IMAGE, ROOT, SHIPPED, load_script, shipped_workflow
from workflow_checks import nodes_of, to_test_prompt

pytestmark = pytest.mark.comfyui
WF = load_script("comfyui_workflows")
HIGFA_NODES = {"HiGFA_Schedule", "HiGFA_ContourTransform", "HiGFA_ContourRanges", "HiGFA_ClassifierLoader",
               "HiGFA_Guider", "HiGFA_Sampler", "HiGFA_Trace", "HiGFA_LoadImageFolder", "HiGFA_SaveImageFolder",
               "HiGFA_WorldLoader", "HiGFA_WorldTextEncode", "HiGFA_WorldImage", "HiGFA_WorldEmptyLatent",
               "HiGFA_ConfidenceFilter", "HiGFA_ClassifierEnsemble"}


def load(name: str) -> dict:
    return shipped_workflow(name)


def saved_images(server, outputs: dict, node: str) -> list:
    images = outputs[node]["images"]
    folder = {"output": "output", "temp": "temp"}
    out = []
    for im in images:
        path = server.base / folder[im["type"]] / im["subfolder"] / im["filename"]
        out.append(cv2.imread(str(path)))
    return out


def test_object_info_lists_every_higfa_node_with_tooltips(server):
    info = server.object_info
    assert {k for k in info if k.startswith("HiGFA_")} == HIGFA_NODES
    for name in HIGFA_NODES:
        node = info[name]
        assert node["category"].split("/")[0] == "HiGFA" and node["description"]
        assert node["python_module"].endswith("comfyui-higfa")
        for group in ("required", "optional"):
            for key, spec in node["input"].get(group, {}).items():
                assert WC.options(spec).get("tooltip"), f"{name}.{key} has no tooltip"


def test_classifier_folder_lists_safetensors_not_sidecars(server):
    spec = server.object_info["HiGFA_ClassifierLoader"]["input"]["required"]["classifier_name"]
    assert WC.combo_options(spec) == ["fgvc_classifier.safetensors"]


def test_workflow_templates_are_listed_once(server):
    """workflows/ is the only copy: ComfyUI lists its files once under the pack's templates."""
    listed = server.get("/api/workflow_templates")["comfyui-higfa"]
    assert sorted(listed) == SHIPPED and len(listed) == len(set(listed)) == 9
    assert not (ROOT / "example_workflows").exists()
    with urllib.request.urlopen(f"{server.url}/api/workflow_templates/comfyui-higfa/{SHIPPED[0]}.json") as r:
        assert json.load(r) == load(SHIPPED[0])  # served from workflows/


def as_shipped(built: dict, shipped: dict) -> dict:
    """A workflow built from this server's /object_info, minus what a newer ComfyUI adds that the shipped files
    (generated on CI's 0.3.75) cannot have: outputs no link uses on stock nodes (0.33.0's SaveImage and
    PreviewImage gained an IMAGE output). Node ids, widget values, links and layout still have to match."""
    built = json.loads(json.dumps(built))
    old = {n["id"]: {o["name"] for o in n["outputs"]} for n in shipped["nodes"]}
    for node in built["nodes"]:
        if not node["type"].startswith("HiGFA_"):
            node["outputs"] = [o for o in node["outputs"] if o["links"] or o["name"] in old.get(node["id"], ())]
    return built


def test_shipped_workflows_match_their_specs(server):
    """workflows/ is generated from scripts/workflow_specs.py: `make workflows` after editing it."""
    built = WF.build(server.object_info)
    assert sorted(built) == SHIPPED
    for name, ui in built.items():
        shipped = load(name)
        assert as_shipped(ui, shipped) == shipped, f"workflows/{name}.json is stale: run make workflows"


def test_schedule_route_serves_the_core_curves(server):
    import numpy as np

    from higfa.schedule import Schedule

    got = server.get("/higfa/schedule?preset=higfa&stage_boundary=0.6&points=11&confidence=0.2,0.8")
    sched = Schedule.from_preset("higfa", stage_boundary=0.6)
    assert got["schedule"] == sched.to_dict() and len(got["progress"]) == 11
    for curve, p in zip(got["curves"], (0.2, 0.8)):
        want = sched.curves(np.linspace(0, 1, 11), p)
        assert curve["confidence"] == p and all(curve[k] == pytest.approx(want[k].tolist()) for k in want)
    cfg = server.get("/higfa/schedule?preset=cfg&contour_strength=0.9&points=3")
    # one rule with the CLI and the bench (Schedule.from_preset): an input changed from its default wins
    assert cfg["schedule"] == Schedule.from_preset("cfg", contour_strength=0.9).to_dict()
    assert cfg["curves"][0]["contour"] == [0.9, 0.9, 0.9]
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.url + "/higfa/schedule?tau_lo=0.95")
    assert e.value.code == 400 and "tau_lo" in json.load(e.value)["error"]


def test_schedule_route_serves_each_presets_parameters(server):
    """What the schedule node's preset dropdown fills its widgets with (web/higfa_schedule.js)."""
    from higfa.schedule import PRESETS, Schedule

    for name in PRESETS:
        assert server.get(f"/higfa/schedule?preset={name}&points=2")["schedule"] == Schedule.from_preset(name).to_dict()


def check_trace(trace: dict, preset: str) -> None:
    s = trace["summary"]
    assert s["steps"] == 30 and 0 < s["stage2_evaluations"] < 30
    assert trace["schedule"]["preset"] == preset
    measured = [r for r in trace["steps"] if r["confidence"] is not None]
    if preset in ("cfg", "contour"):
        assert not measured and s["guided_sample_steps"] == 0
    elif preset == "classifier-all-steps":
        assert len(measured) == 30 and s["guided_sample_steps"] == 60 and s["gated_sample_steps"] == 0
    else:  # higfa, target 0 (the tiny classifier is confident about it): stage 2 measured, backward gated
        assert {r["stage"] for r in measured} == {2} and s["gated_sample_steps"] > 0


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_workflow_validates_and_runs(server, world_path, name):
    ui = load(name)
    assert WC.validate_ui(ui, server.object_info) == []
    prompt = to_test_prompt(ui, server.object_info, server.next_seed())
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"]["messages"])[-3000:]
    out = entry["outputs"]
    # Previews of unchanged inputs (the contour) are cached from earlier prompts; the rest must be new.
    for node in [k for k in out if "images" in out[k]] + nodes_of(prompt, "SaveImage"):
        assert all(im is not None for im in saved_images(server, out, node))
    if name.startswith("higfa-preset-"):
        preset = name.removeprefix("higfa-preset-")
        (sampler,) = nodes_of(prompt, "HiGFA_Sampler")
        check_trace(out[sampler]["higfa_trace"][0], preset)
        (save,) = nodes_of(prompt, "SaveImage")
        assert [im.shape for im in saved_images(server, out, save)] == [(IMAGE, IMAGE, 3)] * 2
    elif name == "higfa-world-compare":
        check_world_outputs(server, out, prompt)
    elif name in ("higfa-sdxl", "higfa-sd3"):
        check_family_outputs(server, out, prompt, name.removeprefix("higfa-"))
    elif name == "higfa-compare-cfg-vs-higfa":
        traces = {prompt[k]["_meta"]["title"]: out[k]["higfa_trace"][0] for k in nodes_of(prompt, "HiGFA_Trace")}
        check_trace(traces["Trace: cfg"], "cfg")
        check_trace(traces["Trace: higfa"], "higfa")
        (save,) = nodes_of(prompt, "SaveImage")
        assert [im.shape for im in saved_images(server, out, save)] == [(IMAGE, 2 * IMAGE + 8, 3)]
    else:
        check_dataset_output(server, out, prompt, {"class_0/img_0.png": 2})


def check_family_outputs(server, out, prompt, family: str) -> None:
    """The SDXL / SD3 workflow on its family's tiny models: one image, and the higfa trace at the workflow's
    steps, its classifier path decoded by the family's TAESD (the stock VAE Loader's taesdxl / taesd3)."""
    (save,) = nodes_of(prompt, "SaveImage")
    assert [im.shape for im in saved_images(server, out, save)] == [(IMAGE, IMAGE, 3)]
    (sampler,) = nodes_of(prompt, "HiGFA_Sampler")
    (vae,) = nodes_of(prompt, "VAELoader")
    assert prompt[vae]["inputs"]["vae_name"] == {"sdxl": "taesdxl", "sd3": "taesd3"}[family]
    trace = out[sampler]["higfa_trace"][0]
    assert trace["schedule"]["preset"] == "higfa" and trace["summary"]["steps"] == prompt[sampler]["inputs"]["steps"]
    assert trace["guidance_decoder"] == "guidance_vae (TAESD)"
    measured = [r for r in trace["steps"] if r["confidence"] is not None]  # target 0: confident, so gated
    assert measured and {r["stage"] for r in measured} == {2} and trace["summary"]["gated_sample_steps"] > 0


def check_world_outputs(server, out, prompt) -> None:
    """The built-in world workflow: one row real | contour | cfg | contour | higfa-robust | higfa-judged (64 px
    each, 4 px apart), and each sampler's trace (30 steps; the guided ones toward the world image's species, the
    judged one judged by the loader's judge: `check_judged_trace`)."""
    (save,) = nodes_of(prompt, "SaveImage")
    assert [im.shape for im in saved_images(server, out, save)] == [(64, 6 * 64 + 5 * 4, 3)]
    (image,) = nodes_of(prompt, "HiGFA_WorldImage")
    species = prompt[image]["inputs"]["species"]
    presets = []
    for sampler in nodes_of(prompt, "HiGFA_Sampler"):
        trace = out[sampler]["higfa_trace"][0]
        preset = prompt[sampler]["_meta"]["title"].removeprefix("Sampler: ")
        presets.append(preset)
        assert trace["schedule"]["preset"] == preset and trace["summary"]["steps"] == 30
        measured = [r for r in trace["steps"] if r["confidence"] is not None]
        if preset in ("higfa-robust", "higfa-judged"):
            assert trace["class_names"][trace["target"][0]] == species
            assert measured and trace["summary"]["guided_sample_steps"] > 0
        else:
            assert not measured
        if preset == "higfa-judged":
            check_judged_trace(trace)
        else:
            assert trace.get("judge") is None
    assert sorted(presets) == ["cfg", "contour", "higfa-judged", "higfa-robust"]


def check_judged_trace(trace: dict) -> None:
    """A run judged by the World Loader's judge: the judge's p on every stage-2 step, and the previous step's p_judge
    sets this step's gate and w_cls = w_max·(1 − h(p_judge)) (the paper's ramp, driven by a classifier that did
    not guide)."""
    s = trace["schedule"]
    assert trace["judge"] == "guidance_robust.safetensors" and s["modulate"] and s["gating"]
    rows = [r for r in trace["steps"] if r["stage"] == 2]
    assert rows and all(r["judge_confidence"] is not None for r in rows)
    for prev, row in zip(rows, rows[1:]):
        p = prev["judge_confidence"][0]
        h = min(max((p - s["tau_lo"]) / (s["tau_hi"] - s["tau_lo"]), 0.0), 1.0)
        gated = p >= s["tau_skip"]
        assert row["gated"] == [gated]
        assert row["classifier_scale"][0] == pytest.approx(0.0 if gated else s["classifier_scale"] * (1 - h),
                                                           abs=1e-5)


def check_dataset_output(server, out, prompt, sources: dict) -> None:
    root = server.base / "output" / "higfa_dataset"
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for source, n in sources.items():
        mine = [r for r in rows if r["source"] == source]
        assert len(mine) >= n and all(r["label"] == source.split("/")[0] for r in mine)
        assert all(cv2.imread(str(root / r["path"])).shape == (IMAGE, IMAGE, 3) for r in mine)
    (sampler,) = nodes_of(prompt, "HiGFA_Sampler")
    assert len(out[sampler]["higfa_trace"]) == len(sources)  # one sampler run per dataset image


def test_dataset_workflow_all_mode_augments_several_classes(server):
    prompt = to_test_prompt(load("higfa-batch-dataset"), server.object_info, server.next_seed())
    (data,) = nodes_of(prompt, "HiGFA_LoadImageFolder")
    prompt[data]["inputs"].update(mode="all", index=1, limit=2)
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"]["messages"])[-3000:]
    check_dataset_output(server, entry["outputs"], prompt, {"class_1/img_1.png": 2, "class_2/img_2.png": 2})
    (sampler,) = nodes_of(prompt, "HiGFA_Sampler")
    targets = [t["target"] for t in entry["outputs"][sampler]["higfa_trace"]]
    assert targets == [[CLASSES.index("class_1")], [CLASSES.index("class_2")]]


def test_class_index_out_of_range_is_a_node_error_and_the_server_stays_up(server):
    prompt = to_test_prompt(load("higfa-preset-higfa"), server.object_info, server.next_seed())
    (sampler,) = nodes_of(prompt, "HiGFA_Sampler")
    prompt[sampler]["inputs"]["target"] = "9"
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert error["node_id"] == sampler and error["node_type"] == "HiGFA_Sampler"
    assert "target class index 9 is out of range: this classifier has 4 classes (0..3)" in error["exception_message"]
    assert server.get("/system_stats")["system"]["comfyui_version"]


def test_invalid_widget_value_is_refused_with_node_errors(server):
    prompt = to_test_prompt(load("higfa-preset-higfa"), server.object_info, server.next_seed())
    (schedule,) = nodes_of(prompt, "HiGFA_Schedule")
    prompt[schedule]["inputs"]["stage_boundary"] = 1.5
    status, body = server.post(prompt)
    # ComfyUI still runs the outputs that do not depend on the bad node (the contour preview): HTTP 200.
    (error,) = body["node_errors"][schedule]["errors"]
    assert status == 200 and error["type"] == "value_bigger_than_max" and error["details"] == "stage_boundary"
    downstream = nodes_of(prompt, "SaveImage") + [k for k in nodes_of(prompt, "PreviewImage")
                                                  if prompt[k]["_meta"]["title"] == "HiGFA trace"]
    assert sorted(body["node_errors"][schedule]["dependent_outputs"]) == sorted(downstream)


def test_real_format_files_through_the_stock_loaders(server, comfy):
    """The higfa workflow with its own CheckpointLoaderSimple and ControlNetLoader reading real-format
    files: an SD 1.5-shaped checkpoint (TAESD VAE, so the classifier's gradient goes through another
    decoder class) and an original-layout ControlNet. Only the text encoder is a test node (a CLIP-L
    file alone would be 250 MB)."""
    from safetensors.torch import save_file

    models = server.base / "models"
    save_file(comfy.tiny.sd15_checkpoint_state(), str(models / "checkpoints" / "tiny_sd15.safetensors"))
    save_file(comfy.tiny.sd15_controlnet_state(), str(models / "controlnet" / "tiny_sd15_canny.safetensors"))
    prompt = WC.ui_to_api(load("higfa-preset-higfa"), server.object_info)
    (ckpt,) = nodes_of(prompt, "CheckpointLoaderSimple")
    (cnet,) = nodes_of(prompt, "ControlNetLoader")
    prompt[ckpt]["inputs"]["ckpt_name"] = "tiny_sd15.safetensors"
    prompt[cnet]["inputs"]["control_net_name"] = "tiny_sd15_canny.safetensors"
    prompt["900"] = {"class_type": "HiGFATest_TinyCLIPL", "inputs": {"seed": 11}}
    for k in nodes_of(prompt, "CLIPTextEncode"):
        prompt[k]["inputs"]["clip"] = ["900", 0]
    (latent,) = nodes_of(prompt, "EmptyLatentImage")
    prompt[latent]["inputs"].update(width=IMAGE, height=IMAGE, batch_size=1)
    (sampler,) = nodes_of(prompt, "HiGFA_Sampler")
    prompt[sampler]["inputs"].update(seed=server.next_seed(), steps=12, target="class_2")
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"]["messages"])[-3000:]
    trace = entry["outputs"][sampler]["higfa_trace"][0]
    assert trace["target"] == [2] and trace["summary"]["guided_sample_steps"] > 0
    assert all(r["grad_norm"] and all(g > 0 for g in r["grad_norm"]) for r in trace["steps"] if r["stage"] == 2)
    (save,) = nodes_of(prompt, "SaveImage")
    assert [im.shape for im in saved_images(server, entry["outputs"], save)] == [(IMAGE, IMAGE, 3)]
