"""Dataset nodes: read an ImageFolder (class sub-folders) and write results back as one, with a manifest."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import comfy.model_management
import folder_paths
import numpy as np
import torch

from ..higfa.jobs.dataset import (append_manifest, class_name_from_label, load_image, safe_label, save_image,
                                  scan_image_folder)
from ._comfy import CATEGORY, check_image_size, io
from ._paths import ALLOWED_ROOTS_ENV, confine, inside


def _scan(folder: str):
    """scan_image_folder on a root confined to ComfyUI's input folder (or HIGFA_ALLOWED_ROOTS): entries
    whose real path leaves those roots (symlinks) are skipped unread, and /interrupt stops the walk."""
    root, roots = confine(folder, folder_paths.get_input_directory(), "folder")

    def keep(path: Path) -> bool:
        comfy.model_management.throw_exception_if_processing_interrupted()
        return not path.is_symlink() or inside(path, roots)

    return scan_image_folder(root, keep)


class HiGFALoadImageFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_LoadImageFolder",
            display_name="HiGFA Load Image Folder",
            category=f"{CATEGORY}/dataset",
            description="Reads an ImageFolder (<folder>/<class name>/<images>). 'single': the image at index, one "
                        "per queue run (set index to increment and queue once per image). 'all': every image as "
                        "a list, so one queue run processes the whole dataset.",
            inputs=[
                io.String.Input("folder", default="dataset",
                                tooltip="Dataset root inside ComfyUI's input folder (relative). Other folders "
                                        f"only when the server's owner lists them in {ALLOWED_ROOTS_ENV} "
                                        "(then absolute)."),
                io.Combo.Input("mode", options=["single", "all"], default="single",
                               tooltip="single: one image per run (by index). all: every image (up to limit) as a "
                                       "list; downstream nodes run once per image."),
                io.Int.Input("index", default=0, min=0, max=0x7FFFFFFF, control_after_generate=True,
                             tooltip="Which image in single mode (wraps around). 'increment' walks the dataset."),
                io.Int.Input("limit", default=0, min=0, max=1000000, tooltip="all mode: at most this many images "
                                                                           "from index on (0 = no limit)."),
                io.String.Input("prompt_template", default="a photo of a {class}",
                                tooltip="Builds the prompt output, as `higfa augment` prompts: {class} is the folder "
                                        "name without a leading number, underscores as spaces ({class_name} is the "
                                        "same), {label} the folder name."),
            ],
            outputs=[
                io.Image.Output(display_name="image", is_output_list=True),
                io.String.Output(display_name="class_name", is_output_list=True,
                                 tooltip="Folder name; connect to the guider's target (matched by name)."),
                io.String.Output(display_name="prompt", is_output_list=True),
                io.String.Output(display_name="item_id", is_output_list=True,
                                 tooltip="Path relative to the dataset root (recorded in the saved manifest)."),
                io.Int.Output(display_name="index", is_output_list=True,
                              tooltip="Position in the dataset (sorted by class, then file)."),
                io.Int.Output(display_name="count", tooltip="Number of images in the dataset."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, folder, **_):
        # Re-run when files are added or changed, not only when the inputs change.
        items, _classes = _scan(folder)
        return hashlib.sha256(repr([(i.id, os.stat(i.path).st_mtime_ns) for i in items]).encode()).hexdigest()

    @classmethod
    def execute(cls, folder, mode, index, limit, prompt_template) -> io.NodeOutput:
        from ..higfa.jobs.prompts import check_prompt, fill_prompt  # the CLI's prompt rule

        check_prompt(prompt_template, "prompt_template")
        items, _classes = _scan(folder)
        if not items:
            raise ValueError(f"folder '{folder}': no images found in its class sub-folders")
        if mode == "single":
            picks = [index % len(items)]
        else:
            picks = list(range(index, len(items)))[: limit or None]
            if not picks:
                raise ValueError(f"index {index} is past the last image: '{folder}' has {len(items)} "
                                 f"(0..{len(items) - 1})")
        out = {k: [] for k in ("image", "class_name", "prompt", "item_id")}
        for i in picks:
            comfy.model_management.throw_exception_if_processing_interrupted()
            item = items[i]
            rgb = load_image(item.path)
            check_image_size(rgb.shape[0], rgb.shape[1], f"image {item.id}")
            out["image"].append(torch.from_numpy(rgb).float().div(255.0).unsqueeze(0))
            out["class_name"].append(item.label)
            out["prompt"].append(fill_prompt(prompt_template, class_name_from_label(item.label), label=item.label))
            out["item_id"].append(item.id)
        return io.NodeOutput(out["image"], out["class_name"], out["prompt"], out["item_id"], picks, len(items))


class HiGFASaveImageFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_SaveImageFolder",
            display_name="HiGFA Save Image Folder",
            category=f"{CATEGORY}/dataset",
            description="Saves images into <output>/<folder>/<class name>/ (an ImageFolder) and appends one row per "
                        "image to <output>/<folder>/manifest.csv (path, label, source). Never overwrites.",
            inputs=[
                io.Image.Input("images", tooltip="Images of one class (a batch: e.g. the variants of one source)."),
                io.String.Input("class_name", default="class", tooltip="Class sub-folder and manifest label."),
                io.String.Input("folder", default="higfa_dataset",
                                tooltip="Dataset folder inside ComfyUI's output folder."),
                io.String.Input("source", default="", optional=True,
                                tooltip="Source image id (HiGFA Load Image Folder's item_id): names the files and "
                                        "fills the manifest's source column."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, class_name, folder, source="") -> io.NodeOutput:
        out_dir = Path(folder_paths.get_output_directory()).resolve()
        root = (out_dir / folder.strip()).resolve()
        try:
            label = safe_label(class_name.strip())
        except ValueError as e:
            raise ValueError(f"class_name: {e}") from None
        if not root.is_relative_to(out_dir) or root == out_dir:
            raise ValueError(f"folder {folder!r}: must be a sub-folder of ComfyUI's output folder")
        stem = re.sub(r"[^\w.-]+", "_", Path(source).stem) if source else "higfa"
        class_dir = root / label
        if not class_dir.resolve().is_relative_to(out_dir):  # a symlinked class folder leading out
            raise ValueError(f"class_name {label!r}: {class_dir} leads outside ComfyUI's output folder")
        taken = {p.name for p in class_dir.glob(f"{stem}_*.png")} if class_dir.is_dir() else set()
        rows, shown, n = [], [], 0
        for image in images:
            while f"{stem}_{n:05d}.png" in taken:
                n += 1
            name = f"{stem}_{n:05d}.png"
            taken.add(name)
            rgb = np.clip(image.detach().cpu().float().numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
            save_image(class_dir / name, rgb)
            rows.append({"path": f"{label}/{name}", "label": label, "source": source})
            shown.append({"filename": name, "subfolder": str(class_dir.relative_to(out_dir)), "type": "output"})
        append_manifest(root / "manifest.csv", rows)
        return io.NodeOutput(ui={"images": shown})
