"""One label -> prompt rule: a CUB-style folder is prompted the same by `higfa augment` and by HiGFA Load
Image Folder (both use higfa.jobs.dataset.class_name_from_label)."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_helpers import make_image

pytestmark = pytest.mark.comfyui


def test_cub_folder_gives_the_same_prompt_in_the_cli_and_the_node(comfy):
    import folder_paths

    from higfa.jobs.dataset import save_image
    from higfa.jobs.item_sampler import PromptText
    from higfa.jobs.plan import make_sources, prompt_names, read_sources

    root = Path(folder_paths.get_input_directory()) / "cub"
    for label in ("001.Black_footed_Albatross", "017.Cardinal"):
        save_image(root / label / "a.png", make_image(7, 32))

    found, labels, _ = read_sources(root)  # the CLI's path from folder to prompt, without the models
    sources = make_sources(found, prompt_names(labels, set(labels), None, None))
    cli = [PromptText("a photo of a {class}", "bird").for_source(s) for s in sources]

    node = comfy.pack.nodes.dataset.HiGFALoadImageFolder
    _, names, prompts, ids, _, _ = node.execute("cub", "all", 0, 0, "a photo of a {class_name}").args
    assert ids == [s.id for s in sources] and names == labels
    assert prompts == cli == ["a photo of a Black footed Albatross", "a photo of a Cardinal"]
