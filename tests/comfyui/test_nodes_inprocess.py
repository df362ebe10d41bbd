"""Node-level behaviour without a server: dataset nodes, the contour node, the classifier loader,
the schedule node (ComfyUI imported in-process)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from comfy_helpers import CLASSES, make_classifier, make_image

pytestmark = pytest.mark.comfyui


@pytest.fixture
def dataset(comfy, request):
    """A small ImageFolder inside ComfyUI's input folder (where Load Image Folder may read), one per test."""
    from higfa.jobs.dataset import save_image

    tmp_path = comfy.tmp / "input" / request.node.name

    for i, name in enumerate(CLASSES[:2]):
        for k in range(2):
            save_image(tmp_path / "data" / name / f"im{k}.png", make_image(20 + 2 * i + k, 48))
    return tmp_path / "data"


def test_folder_reader_single_and_all_modes(comfy, dataset):
    node = comfy.pack.nodes.dataset.HiGFALoadImageFolder
    out = node.execute(str(dataset), "single", 5, 0, "a photo of a {class_name}").args
    images, names, prompts, ids, index, count = out
    assert count == 4 and index == [1] and ids == ["class_0/im1.png"] and names == ["class_0"]
    assert prompts == ["a photo of a class 0"] and images[0].shape == (1, 48, 48, 3)
    assert 0.0 <= float(images[0].min()) and float(images[0].max()) <= 1.0
    images, names, _, ids, index, _ = node.execute(str(dataset), "all", 1, 2, "{class_name}").args
    assert index == [1, 2] and names == ["class_0", "class_1"] and ids == ["class_0/im1.png", "class_1/im0.png"]
    with pytest.raises(ValueError, match="index 9 is past the last image"):
        node.execute(str(dataset), "all", 9, 0, "")
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        node.execute(str(dataset / "nope"), "single", 0, 0, "")


def test_folder_reader_reruns_when_files_change(comfy, dataset):
    from higfa.jobs.dataset import save_image

    node = comfy.pack.nodes.dataset.HiGFALoadImageFolder
    before = node.fingerprint_inputs(folder=str(dataset), mode="single", index=0)
    assert before == node.fingerprint_inputs(folder=str(dataset), mode="single", index=0)
    save_image(dataset / "class_1" / "new.png", make_image(99, 48))
    assert node.fingerprint_inputs(folder=str(dataset), mode="single", index=0) != before


def test_save_node_writes_an_image_folder_and_never_overwrites(comfy):
    import folder_paths

    from higfa.jobs.dataset import read_manifest

    node = comfy.pack.nodes.dataset.HiGFASaveImageFolder
    images = torch.rand(2, 16, 16, 3)
    for _ in range(2):
        ui = node.execute(images, "class_1", "aug", "class_1/im0.png").ui
    root = comfy.tmp / "output" / "aug"
    items = read_manifest(root / "manifest.csv")
    assert [i.id for i in items] == [f"class_1/im0_{n:05d}.png" for n in range(4)]
    assert all(i.label == "class_1" and i.path.is_file() for i in items)
    assert ui["images"][0] == {"filename": "im0_00002.png", "subfolder": "aug/class_1", "type": "output"}
    assert folder_paths.get_output_directory() == str(comfy.tmp / "output")
    with pytest.raises(ValueError, match="sub-folder of ComfyUI's output folder"):
        node.execute(images, "class_1", "../escape", "")
    with pytest.raises(ValueError, match="class_name: label 'a/b' can't be a folder name"):
        node.execute(images, "a/b", "aug", "")


def test_contour_node_variants_ranges_and_index(comfy):
    nodes = comfy.pack.nodes.contour
    batch = torch.from_numpy(np.stack([make_image(1), make_image(2)])).float() / 255
    run = nodes.HiGFAContourTransform.execute
    contour, edges = run(batch, "canny", 120.0, 200.0, 0.0, False, 0.5, 7, 3).args
    assert contour.shape == (6, 64, 64, 3) and edges.shape == (2, 64, 64, 3)
    assert set(torch.unique(edges).tolist()) <= {0.0, 1.0} and edges.sum() > 0
    second, _ = run(batch[1:], "canny", 120.0, 200.0, 0.0, False, 0.5, 7, 3, index=1).args
    assert torch.equal(second, contour[3:])  # one image at a time draws what the batch drew
    assert torch.equal(run(batch, "canny", 120.0, 200.0, 0.0, False, 0.0, 7, 1).args[0], edges)  # amount 0
    still = nodes.HiGFAContourRanges.execute(rotation=0.0, scale=0.0, translate=0.0, shear=0.0, flip=0.0, warp=0.0,
                                             warp_kind="none", warp_smoothness=0.1, erase_patches=0, erase_size=0.1,
                                             thickness=0).args[0]
    assert torch.equal(run(batch, "canny", 120.0, 200.0, 0.0, False, 1.0, 7, 2, ranges=still).args[0],
                       edges.repeat_interleave(2, 0))


def test_classifier_loader_lists_loads_and_explains_a_wrong_input_size(comfy, tmp_path):
    import folder_paths

    from higfa.classifier import build_classifier, save_classifier

    folder_paths.add_model_folder_path("classifiers", str(tmp_path))
    make_classifier(tmp_path / "good.safetensors")
    vit = build_classifier("vit_tiny_patch16_224", CLASSES, 64)  # fixed 224-px input; the sidecar says 64
    save_classifier(vit, tmp_path / "vit_wrong_size.safetensors")
    names = folder_paths.get_filename_list("classifiers")
    assert {"good.safetensors", "vit_wrong_size.safetensors"} <= set(names)
    assert not [n for n in names if n.endswith(".json")]
    loader = comfy.pack.nodes.classifier.HiGFAClassifierLoader
    with torch.inference_mode():
        clf, class_names, info = loader.execute("good.safetensors").args
    assert class_names.splitlines() == CLASSES and not any(p.is_inference() for p in clf.parameters())
    assert clf.source == "good.safetensors"  # a trace names a judge by its file
    assert info == f"{clf.architecture}, {len(CLASSES)} classes, val accuracy unknown (no provenance in the sidecar)"
    side = tmp_path / "good.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "provenance": {"val_accuracy": 0.75}}))
    with torch.inference_mode():
        assert loader.execute("good.safetensors").args[2].endswith(f"{len(CLASSES)} classes, val accuracy 0.750")
    with torch.inference_mode(), pytest.raises(ValueError, match="Set 'input_size' in its .json sidecar"):
        loader.execute("vit_wrong_size.safetensors")


def test_schedule_node_follows_the_one_preset_rule(comfy):
    """Schedule.from_preset's rule (the CLI's and the bench's): the preset sets what defines it, an input changed
    from its default overrides it; inputs left at their defaults take the preset's values."""
    from higfa.schedule import Schedule

    node = comfy.pack.nodes.schedule
    values = {f: getattr(node._DEFAULT, f) for f in node.FIELDS} | {"contour_strength": 0.9, "tau_skip": 0.5}
    sched, text = node.HiGFASchedule.execute("cfg", **values).args
    assert sched.to_dict() == Schedule.from_preset("cfg", contour_strength=0.9, tau_skip=0.5).to_dict()
    assert sched.contour_strength == 0.9 and sched.contour_lowconf == 0 and sched.classifier_steps == "off"
    assert json.loads(text)["preset"] == "cfg"
    assert node.HiGFASchedule.execute("custom", **values).args[0].contour_strength == 0.9
    with pytest.raises(ValueError, match="tau_lo must be smaller than tau_hi"):
        node.HiGFASchedule.execute("higfa", **(values | {"tau_lo": 0.95}))
