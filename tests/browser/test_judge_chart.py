"""The trace chart of a judged run (issue 25): HiGFA Sampler's chart draws the guide's p and the judge's p (which
drove the schedule) with the gap between them shaded; an unjudged trace draws neither the judge's curve nor the
gap. The traces come from the core (a tiny run), handed to the node as its `ui` output."""

from __future__ import annotations

import json

import pytest

from comfy_helpers import ROOT, WORKFLOWS
from comfy_page import load_workflow, node_ids, screenshot_chart

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "test-artifacts" / "browser"


def traces(world) -> dict:
    """A judged and an unjudged run of the same tiny sampling: the guide is sure of class 1, the judge is not."""
    import torch

    from higfa.guide import Guide
    from higfa.sampler import sample
    from higfa.schedule import Schedule

    class Fixed(torch.nn.Module):  # p(class 1) depends on `sure`; differentiable through the image
        def __init__(self, sure):
            super().__init__()
            self.sure = sure

        def forward(self, image):
            onehot = torch.nn.functional.one_hot(torch.tensor(1), 4).float()
            return onehot * (image.mean((1, 2, 3))[:, None] * 0.1 + self.sure)

    sigmas = world.noise_schedule.sample_sigmas(12)
    out = {}
    for name, judge in (("judged", Fixed(0.8)), ("plain", None)):
        guide = Guide(Schedule(stage_boundary=0.4), Fixed(6.0), world.decode, target=1, judge=judge,
                      judge_name="judge.safetensors" if judge is not None else None)
        out[name] = sample(world.denoiser, world.noise(1), sigmas, guide).trace.to_dict()
    assert out["judged"]["summary"]["fooling_gap"][0] > 0.3
    return out


COUNT = """([id, colors]) => {
    const n = window.app.graph.getNodeById(id), c = n.higfaTrace.chart.canvas;
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    return colors.map(([r, g, b]) => {
        let k = 0;
        for (let i = 0; i < d.length; i += 4)
            if (Math.abs(d[i] - r) + Math.abs(d[i + 1] - g) + Math.abs(d[i + 2] - b) < 40) k++;
        return k;
    });
}"""
VIOLET, GREEN = (0xB5, 0x8C, 0xF0), (0x6C, 0xC0, 0x70)  # web/lib/lanes.js COLORS.judge, COLORS.confidence


def show(page, node: int, trace: dict) -> int:
    """Hands `trace` to the node as its executed `ui` output; returns the chart's draw count after it."""
    before = page.evaluate("id => Number(window.app.graph.getNodeById(id).higfaTrace.chart.canvas.dataset.draws)",
                           node)
    page.evaluate("([id, t]) => window.app.graph.getNodeById(id).onExecuted({higfa_trace: [t]})", [node, trace])
    page.wait_for_function("([id, n]) => Number(window.app.graph.getNodeById(id).higfaTrace.chart.canvas"
                           ".dataset.draws) > n", arg=[node, before], timeout=10_000)
    return before


def test_a_judged_trace_draws_both_confidences_and_the_gap(ui, tiny_world):
    page = ui.page
    runs = traces(tiny_world)
    load_workflow(page, json.loads((WORKFLOWS / "higfa-preset-higfa.json").read_text()))
    (node,) = node_ids(page, "HiGFA_Sampler")
    show(page, node, runs["plain"])
    plain_violet, plain_green = page.evaluate(COUNT, [node, [VIOLET, GREEN]])
    show(page, node, runs["judged"])
    screenshot_chart(page, node, ARTIFACTS / "judged-trace-chart.png")
    violet, green = page.evaluate(COUNT, [node, [VIOLET, GREEN]])
    assert plain_violet == 0 and plain_green > 50  # one curve: the guide's p
    assert violet > 50 and green > 50  # both curves
    state = page.evaluate("id => window.app.graph.getNodeById(id).higfaTrace.traces.at(-1).judge", node)
    assert state == "judge.safetensors"
