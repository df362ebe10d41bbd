"""One label -> prompt rule: a CUB-style folder is prompted the same by `higfa augment` and by HiGFA Load
Image Folder (both use higfa.jobs.prompts: {class}, with {class_name} as its alias for saved workflows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_helpers import make_image

pytestmark = pytest.mark.comfyui


def test_cub_folder_gives_the_same_prompt_in_the_cli_and_the_node(comfy):
    import folder_paths

    from higfa.jobs.dataset import read_sources, save_image
    from higfa.jobs.plan import make_sources
    from higfa.jobs.prompts import PromptText, prompt_names

    root = Path(folder_paths.get_input_directory()) / "cub"
    for label in ("001.Black_footed_Albatross", "017.Cardinal"):
        save_image(root / label / "a.png", make_image(7, 32))

    found, labels, _ = read_sources(root)  # the CLI's path from folder to prompt, without the models
    sources = make_sources(found, prompt_names(labels, set(labels), None, None))
    cli = [PromptText("a photo of a {class}", "bird").for_source(s) for s in sources]

    node = comfy.pack.nodes.dataset.HiGFALoadImageFolder
    for template in ("a photo of a {class}", "a photo of a {class_name}"):  # {class_name}: saved workflows
        _, names, prompts, ids, _, _ = node.execute("cub", "all", 0, 0, template).args
        assert ids == [s.id for s in sources] and names == labels
        assert prompts == cli == ["a photo of a Black footed Albatross", "a photo of a Cardinal"]
    with pytest.raises(ValueError, match=r"prompt_template .*\{species\}.*placeholders are \{class\}"):
        node.execute("cub", "all", 0, 0, "a photo of a {species}")
