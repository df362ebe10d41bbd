"""HiGFA Confidence Filter: keep the images a judge believes (the core's `higfa.judge.confidence_filter`)."""

from __future__ import annotations

import copy

import comfy.model_management as mm
import torch

from ..higfa.judge import confidence_filter
from ._comfy import CATEGORY, CLASSIFIER, io


def resolve_targets(judge, target: str, count: int) -> list[int]:
    """The target text (one class name or index for every image, or one per line, one line per image) as the
    judge's class indices; a wrong name or count is a ValueError naming the input."""
    lines = [t.strip() for t in str(target).splitlines() if t.strip()]
    if not lines:
        raise ValueError("HiGFA Confidence Filter: 'target' is empty: give a class name or index of the judge "
                         "(one for all images, or one per line, one line per image)")
    if len(lines) not in (1, count):
        raise ValueError(f"HiGFA Confidence Filter: 'target' has {len(lines)} lines for {count} images: give one "
                         "class for all images, or exactly one per image")
    indices = [judge.resolve(t) for t in lines]
    return indices * count if len(indices) == 1 else indices


class HiGFAConfidenceFilter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_ConfidenceFilter",
            display_name="HiGFA Confidence Filter",
            category=f"{CATEGORY}/sampling",
            description="Keeps the images a judge classifier believes: its softmax probability of the target "
                        "class >= threshold. Use a classifier that did not guide the images (e.g. your first guide "
                        "for images a second-round guide made): a guide believes the patterns it painted itself. "
                        "The dropped images stay available for inspection.",
            inputs=[
                io.Image.Input("images", tooltip="The finished images (a batch), e.g. VAE Decode of HiGFA Sampler."),
                CLASSIFIER.Input("judge", tooltip="The classifier that judges (HiGFA Classifier Loader); ideally "
                                                  "not the one that guided these images."),
                io.String.Input("target", default="0", multiline=True,
                                tooltip="The class each image should show: a class name or index of the judge, for "
                                        "every image, or one per line (one line per image, in batch order)."),
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Keep an image when the judge's probability of its target is at least "
                                       "this (0 keeps all, 1 keeps only certain ones)."),
            ],
            outputs=[io.Image.Output(display_name="kept", tooltip="The images at or above the threshold, in order "
                                                                  "(an empty batch when none is)."),
                     io.String.Output(display_name="confidences",
                                      tooltip="The judge's probability of the target for each kept image, one per "
                                              "line, in the kept images' order."),
                     io.Image.Output(display_name="dropped", tooltip="The images below the threshold, in order "
                                                                     "(an empty batch when none is).")],
        )

    @classmethod
    def execute(cls, images, judge, target, threshold) -> io.NodeOutput:
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
            raise ValueError(f"HiGFA Confidence Filter: 'images' must be a batch of RGB images [N,H,W,3], got shape "
                             f"{tuple(images.shape)}")
        targets = resolve_targets(judge, target, images.shape[0])
        device = mm.get_torch_device()
        with torch.inference_mode(False):  # a private copy on the device: the loader's output is a cached object
            model = copy.deepcopy(judge).to(device).eval()
        x = images.movedim(-1, 1).to(device, torch.float32)
        result = confidence_filter(x, model, targets, threshold, batch_size=16)
        del model
        pick = lambda rows: images[torch.tensor(rows, dtype=torch.long)]  # noqa: E731 ([] -> an empty batch)
        kept, dropped = pick(result.kept), pick(result.dropped)
        text = "\n".join(f"{float(result.confidence[i]):.4f}" for i in result.kept)
        return io.NodeOutput(kept, text, dropped)


NODES = [HiGFAConfidenceFilter]
