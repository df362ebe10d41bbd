"""HiGFA Trace: the per-step trace of a HiGFA guider's last run, as a plot IMAGE and as JSON."""

from __future__ import annotations

import json

import torch

from ..higfa.trace import Trace
from ._comfy import CATEGORY, io


def trace_outputs(trace: Trace) -> tuple[torch.Tensor, str, dict]:
    """(plot as a [1,H,W,3] IMAGE, JSON string, node `ui` payload). The front end draws the
    `higfa_trace` entry as a chart on the node (web/higfa_trace.js); no preview image as well, which
    would show the same plot twice and grow the node over its neighbours. The plot stays an output."""
    data = trace.to_dict()
    image = torch.from_numpy(trace.plot()).float().div(255.0).unsqueeze(0)
    return image, json.dumps(data), {"higfa_trace": [data]}


class HiGFATrace(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_Trace",
            display_name="HiGFA Trace",
            category=f"{CATEGORY}/sampling",
            description="Confidence, text CFG, contour strength and classifier scale per step of a HiGFA Guider's "
                        "last run (stage boundary dashed, gated steps ×). With a judge: the guide's and the judge's "
                        "confidence, the gap between them (the guide's fooling) shaded.",
            inputs=[io.Guider.Input("guider", tooltip="The GUIDER of a HiGFA Guider node."),
                    io.Latent.Input("latent", tooltip="The sampler's output: makes this node run after sampling.")],
            outputs=[io.Image.Output(display_name="trace_plot"), io.String.Output(display_name="trace_json")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, guider, latent) -> io.NodeOutput:
        guide = getattr(guider, "guide", None)
        if guide is None:
            raise ValueError(f"HiGFA Trace: the guider input is a {type(guider).__name__}, not a HiGFA guider: "
                             "connect the GUIDER output of a HiGFA Guider node")
        if not guide.trace.steps:
            raise ValueError("HiGFA Trace: this guider has not sampled yet: connect the LATENT output of the "
                             "SamplerCustomAdvanced that uses it")
        image, text, payload = trace_outputs(guide.trace)
        return io.NodeOutput(image, text, ui=payload)
