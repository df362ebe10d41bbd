"""The built-in-world workflow in a real browser, as a newcomer runs it: load the shipped template,
pick a species, press Run (nothing to download or swap), and see the images and the trace charts.

Screenshots go to test-artifacts/browser/ (git-ignored).
"""

from __future__ import annotations

import json

import pytest

from comfy_helpers import ROOT, WORKFLOWS
from comfy_page import WORLD_WORKFLOW, fit_view, focus_node, load_workflow, node_ids, queue_and_wait, reseed, \
    screenshot, screenshot_chart, screenshot_graph

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "test-artifacts" / "browser"
NAME = WORLD_WORKFLOW


def set_widget(page, node_id: int, name: str, value) -> None:
    page.evaluate("""([id, name, value]) => {
        const n = window.app.graph.getNodeById(id), w = n.widgets.find(w => w.name === name);
        w.setValue(value, {e: undefined, node: n, canvas: window.app.canvas});
    }""", [node_id, name, value])


def test_world_workflow_runs_out_of_the_box_and_shows_its_images(ui, world_path):
    page = ui.page
    load_workflow(page, json.loads((WORKFLOWS / f"{NAME}.json").read_text()))
    assert page.evaluate("""() => window.app.graph.nodes
        .filter(n => n.has_errors || !(n.type in LiteGraph.registered_node_types)).length""") == 0
    (image,) = node_ids(page, "HiGFA_WorldImage")
    set_widget(page, image, "species", "spectacled warbler")
    reseed(page, ui.server.next_seed())
    result = queue_and_wait(page)
    assert not result["node_errors"], json.dumps(result["node_errors"])[:2000]
    assert result["run"]["type"] == "execution_success", json.dumps(result["run"])[:2000]

    fit_view(page)
    page.wait_for_function("""() => window.app.graph.nodes.filter(n => ["SaveImage", "PreviewImage"].includes(n.type))
        .every(n => n.imgs?.length && n.imgs.every(i => i.complete && i.naturalWidth > 0))""", timeout=30_000)
    shown = page.evaluate("""() => window.app.graph.nodes.filter(n => n.type === "SaveImage")
        .map(n => n.imgs.map(i => [i.naturalWidth, i.naturalHeight]))""")
    assert shown == [[[6 * 64 + 5 * 4, 64]]]  # real | contour | cfg | contour | higfa-robust | higfa-judged
    traces = page.evaluate("""() => window.app.graph.nodes.filter(n => n.type === "HiGFA_Sampler").map(n => {
        const t = n.higfaTrace.traces?.at(-1), c = n.higfaTrace.chart.canvas;
        return {title: n.title, preset: t?.schedule.preset, target: t?.target, steps: t?.summary.steps,
                judge: t?.judge ?? null, judged_steps: (t?.steps ?? []).filter(r => r.judge_confidence != null).length,
                draws: Number(c.dataset.draws), in_page: c.isConnected && c.clientHeight > 100};
    })""")
    assert sorted(t["preset"] for t in traces) == ["cfg", "contour", "higfa-judged", "higfa-robust"]
    for t in traces:
        assert t["steps"] == 30 and t["in_page"] and t["draws"] >= 2, t
        guided = t["preset"] in ("higfa-robust", "higfa-judged")
        assert t["target"] == ([6] if guided else None), t  # spectacled warbler
        # the judged column: the World Loader's judge measured every stage-2 step (the chart draws p_judge)
        judged = t["preset"] == "higfa-judged"
        assert t["judge"] == ("guidance_robust.safetensors" if judged else None), t
        assert (t["judged_steps"] > 0) == judged, t
    screenshot_graph(page, ARTIFACTS / f"{NAME}-run.png")
    (save,) = node_ids(page, "SaveImage")
    focus_node(page, save, 2.0)
    screenshot(page, ARTIFACTS / f"{NAME}-run-images.png")
    higfa = next(n for n, t in zip(node_ids(page, "HiGFA_Sampler"), traces) if t["preset"] == "higfa-judged")
    screenshot_chart(page, higfa, ARTIFACTS / f"{NAME}-trace-chart.png")


def test_a_page_that_stops_drawing_is_detected_and_replaced(chromium):
    """The harness's guard (conftest `ui`): a page that draws no frame (here its main thread spins) reads as
    stalled within the probe's timeout instead of hanging, and relaunch() gives a fresh app that draws."""
    from comfy_page import draws_frames

    page = chromium.page
    assert draws_frames(page)
    page.evaluate("() => { setTimeout(() => { for (;;) {} }, 0); }")  # never yields to the renderer again
    assert not draws_frames(page, 3_000)
    chromium.relaunch()
    assert chromium.page is not page and draws_frames(chromium.page)
    assert chromium.page.evaluate("() => window.app.graph.nodes.length") > 0
    assert any(m.endswith("Chromium was relaunched") for m in chromium.console)
