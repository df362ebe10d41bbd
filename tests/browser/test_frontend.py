"""The pack's front end in a real browser: shipped workflows load with no missing or red node, the
schedule chart follows widget edits with the numbers of higfa.Schedule, the preset dropdown fills the
parameters, tooltips show, and a queued workflow (tiny test models) shows its images and trace chart.

Screenshots go to test-artifacts/browser/ (git-ignored).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from comfy_helpers import ROOT, SHIPPED, WORKFLOWS
from comfy_page import (WORLD_WORKFLOW, fit_view, focus_node, load_workflow, node_ids, queue_and_wait, reseed,
                        screenshot, screenshot_chart, screenshot_graph, set_setting, tiny, wait_app)

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "test-artifacts" / "browser"
# Queued here with the tiny stand-ins of the stock loaders (the SD 1.5 ones; the SDXL / SD3 workflows' with
# their family's tiny models: tests/comfyui/testpack/families.py); the built-in-world workflow needs no swap
# and is queued by test_world_workflow.py.
SD15 = [n for n in SHIPPED if '"CheckpointLoaderSimple"' in (WORKFLOWS / f"{n}.json").read_text()]
EXTENSIONS = ["HiGFA.NodeColor", "HiGFA.ScheduleChart", "HiGFA.TraceChart"]
HIGFA_COLOR = {"color": "#1f4a4f", "bgcolor": "#263a3d"}  # web/higfa_nodes.js
TRACE_NODES = ("HiGFA_Sampler", "HiGFA_Trace")


def shipped(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def our_console(ui) -> list[str]:
    """Console errors/warnings that come from this pack's files or name it (a deprecation our legacy import
    causes names our extension). The front end's own warnings (1.49.6 logs "deprecated" ones with no custom
    nodes installed) are not the pack's."""
    return [m for m in ui.console if "comfyui-higfa" in m or "higfa" in m.lower()]


def schedule_state(page, node_id: int) -> dict:
    return page.evaluate("""id => {
        const n = window.app.graph.getNodeById(id), s = n.higfaChart, c = s.chart.canvas;
        return {data: s.data, error: s.error, draws: Number(c.dataset.draws), png: c.toDataURL(),
                widgets: Object.fromEntries(n.widgets.filter(w => w !== s.chart)
                                            .map(w => [w.name, w.value]))};
    }""", node_id)


def set_widget(page, node_id: int, name: str, value) -> None:
    """As a user edit does: widget.setValue runs the widget's callback and node.onWidgetChanged."""
    page.evaluate("""([id, name, value]) => {
        const n = window.app.graph.getNodeById(id), w = n.widgets.find(w => w.name === name);
        w.setValue(value, {e: undefined, node: n, canvas: window.app.canvas});
    }""", [node_id, name, value])


def wait_schedule(page, node_id: int, condition: str, timeout_ms: int = 15_000) -> None:
    """Waits until `condition` (JS over s = node.higfaChart, n = the node) holds."""
    page.wait_for_function(f"""id => {{ const n = window.app.graph.getNodeById(id), s = n.higfaChart;
                                       return !!({condition}); }}""", arg=node_id, timeout=timeout_ms)


def graph_report(page) -> dict:
    return page.evaluate("""() => {
        const nodes = window.app.graph.nodes;
        return {
            missing: nodes.filter(n => !(n.type in LiteGraph.registered_node_types)).map(n => n.type),
            // drawn red: a missing type, a validation error of the last queue, or the last run's failing node
            red: nodes.filter(n => n.has_errors || window.app.lastNodeErrors?.[n.id]
                                   || String(window.app.lastExecutionError?.node_id) === String(n.id))
                      .map(n => `${n.id} ${n.type}`),
            colors: nodes.filter(n => n.type.startsWith("HiGFA_")).map(n => ({color: n.color, bgcolor: n.bgcolor})),
            schedule_charts: nodes.filter(n => n.type === "HiGFA_Schedule").map(n => {
                const c = n.higfaChart.chart.canvas;
                return {in_page: !!c && c.isConnected && c.clientHeight > 100, draws: Number(c?.dataset.draws),
                        error: n.higfaChart.error, boundary: n.higfaChart.data?.schedule.stage_boundary,
                        widget_boundary: n.widgets.find(w => w.name === "stage_boundary").value};
            }),
            trace_charts: nodes.filter(n => ["HiGFA_Sampler", "HiGFA_Trace"].includes(n.type)).map(n => {
                const c = n.higfaTrace.chart.canvas;
                return {in_page: !!c && c.isConnected && c.clientHeight > 100, draws: Number(c?.dataset.draws),
                        steps: n.higfaTrace.traces?.at(-1)?.summary.steps ?? null};
            }),
        };
    }""")


def shown_images(page) -> dict:
    """Per output node (by id): how many of its images the page has loaded and decoded."""
    return page.evaluate("""() => Object.fromEntries(window.app.graph.nodes
        .filter(n => ["SaveImage", "PreviewImage", "HiGFA_SaveImageFolder"].includes(n.type))
        .map(n => [`${n.id} ${n.title}`, (n.imgs || []).filter(i => i.complete && i.naturalWidth > 0).length]))""")


# ----------------------------------------------------------------------------- the tests
def test_extensions_load_from_the_pack_without_errors(ui):
    names = ui.page.evaluate("window.app.extensions.map(e => e.name)")
    assert [n for n in EXTENSIONS if n not in names] == []
    served = {u.rsplit("/", 1)[1]: status for status, u in ui.served if "/extensions/comfyui-higfa/" in u}
    assert served == {name: 200 for name in ("higfa_nodes.js", "higfa_schedule.js", "higfa_trace.js", "lanes.js",
                                             "chart_widget.js")}
    assert our_console(ui) == []


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_workflow_loads_without_missing_or_red_nodes(ui, name):
    page = ui.page
    load_workflow(page, shipped(name))
    wait_all_schedule_charts(page)
    report = graph_report(page)
    assert report["missing"] == [] and report["red"] == []
    assert report["colors"] and all(c == HIGFA_COLOR for c in report["colors"])
    assert report["schedule_charts"], "every shipped workflow has a HiGFA Schedule"
    for chart in report["schedule_charts"]:
        assert chart["in_page"] and chart["draws"] >= 1 and chart["error"] is None
        assert chart["boundary"] == chart["widget_boundary"]
    assert report["trace_charts"] and all(c["in_page"] and c["steps"] is None for c in report["trace_charts"])
    screenshot_graph(page, ARTIFACTS / f"{name}-loaded.png")


@pytest.mark.parametrize("name", SD15)
def test_shipped_workflow_queued_with_tiny_models_shows_images_and_traces(ui, name):
    """Queued from the page as the Run button does; no validation error, no failed node; every image
    output shows on the page and every sampler/trace node draws its trace."""
    page = ui.page
    load_workflow(page, tiny(shipped(name)))
    reseed(page, ui.server.next_seed())
    result = queue_and_wait(page)
    assert not result["node_errors"], json.dumps(result["node_errors"])[:2000]
    assert result["run"]["type"] == "execution_success", json.dumps(result["run"])[:2000]
    fit_view(page)
    page.wait_for_function("""() => window.app.graph.nodes
        .filter(n => ["SaveImage", "PreviewImage", "HiGFA_SaveImageFolder"].includes(n.type))
        .every(n => n.imgs?.length && n.imgs.every(i => i.complete && i.naturalWidth > 0))""", timeout=30_000)
    report = graph_report(page)
    assert report["red"] == []
    assert all(n >= 1 for n in shown_images(page).values())
    for chart in report["trace_charts"]:
        assert chart["steps"] and chart["steps"] > 0 and chart["draws"] >= 2  # placeholder, then the trace
    screenshot_graph(page, ARTIFACTS / f"{name}-run.png")
    for kind in TRACE_NODES:
        for node_id in node_ids(page, kind)[:1]:
            focus_node(page, node_id)
            screenshot(page, ARTIFACTS / f"{name}-run-{kind}.png")
            screenshot_chart(page, node_id, ARTIFACTS / f"{name}-trace-chart.png")


def wait_all_schedule_charts(page) -> None:
    page.wait_for_function("""() => window.app.graph.nodes.filter(n => n.type === "HiGFA_Schedule")
        .every(n => (n.higfaChart.data || n.higfaChart.error)
                    && Number(n.higfaChart.chart.canvas.dataset.draws) > 0)""",
                           timeout=15_000)


def test_schedule_chart_redraws_with_the_core_numbers_when_a_widget_changes(ui):
    from higfa.schedule import Schedule

    page = ui.page
    load_workflow(page, shipped("higfa-preset-higfa"))
    (node,) = node_ids(page, "HiGFA_Schedule")
    wait_schedule(page, node, "s.data && s.data.schedule.stage_boundary === 0.7")
    focus_node(page, node)
    before = schedule_state(page, node)
    screenshot(page, ARTIFACTS / "schedule-chart-boundary-0.7.png")
    screenshot_chart(page, node, ARTIFACTS / "schedule-chart-boundary-0.7-closeup.png")
    focus_node(page, node)

    set_widget(page, node, "stage_boundary", 0.4)
    wait_schedule(page, node, "s.data && s.data.schedule.stage_boundary === 0.4")
    page.wait_for_timeout(100)
    after = schedule_state(page, node)
    assert after["draws"] > before["draws"] and after["png"] != before["png"]
    # Single source of truth: what the chart drew is higfa.Schedule's curves for these widget values.
    want = Schedule.from_preset("higfa", stage_boundary=0.4)
    progress = np.array(after["data"]["progress"])
    for curve in after["data"]["curves"]:
        for key, values in want.curves(progress, curve["confidence"]).items():
            assert curve[key] == pytest.approx(values.tolist()), key
    assert [c["confidence"] for c in after["data"]["curves"]] == [0.0, 1.0]  # the modulation band's edges
    screenshot(page, ARTIFACTS / "schedule-chart-boundary-0.4.png")
    screenshot_chart(page, node, ARTIFACTS / "schedule-chart-boundary-0.4-closeup.png")

    # Several quick edits (typing) ask the route once or twice, not once per edit.
    requests: list[str] = []
    page.on("request", lambda r: "/higfa/schedule" in r.url and requests.append(r.url))
    for value in (3.0, 3.5, 4.5, 5.0, 2.0):
        set_widget(page, node, "cfg_lowconf", value)
    wait_schedule(page, node, "s.data && s.data.schedule.cfg_lowconf === 2.0")
    assert 1 <= len(requests) <= 2, requests

    # A value the core refuses: the chart shows the core's message instead of a curve.
    set_widget(page, node, "tau_lo", 0.95)
    wait_schedule(page, node, "s.error")
    assert "tau_lo must be smaller than tau_hi" in schedule_state(page, node)["error"]
    screenshot(page, ARTIFACTS / "schedule-chart-invalid-tau.png")
    set_widget(page, node, "tau_lo", 0.3)
    wait_schedule(page, node, "s.data && !s.error")


@pytest.mark.parametrize("preset", ["cfg", "contour", "classifier-all-steps", "higfa"])
def test_preset_dropdown_fills_every_parameter(ui, preset):
    from higfa.schedule import Schedule

    page = ui.page
    start = "contour" if preset == "higfa" else "higfa"
    load_workflow(page, shipped(f"higfa-preset-{start}"))
    (node,) = node_ids(page, "HiGFA_Schedule")
    set_widget(page, node, "cfg", 3.25)  # an edit the preset must overwrite
    set_widget(page, node, "preset", preset)
    want = {k: v for k, v in Schedule.from_preset(preset).to_dict().items() if k != "preset"}
    wait_schedule(page, node, f"s.data && s.data.schedule.preset === {json.dumps(preset)} && "
                              "n.widgets.find(w => w.name === 'cfg').value !== 3.25")
    got = schedule_state(page, node)["widgets"]
    assert got.pop("preset") == preset and got == want
    if preset == "cfg":
        focus_node(page, node)
        screenshot(page, ARTIFACTS / "schedule-chart-preset-cfg.png")


def test_custom_preset_keeps_the_parameters(ui):
    page = ui.page
    load_workflow(page, shipped("higfa-preset-higfa"))
    (node,) = node_ids(page, "HiGFA_Schedule")
    set_widget(page, node, "cfg_highconf", 9.5)
    set_widget(page, node, "preset", "custom")
    wait_schedule(page, node, "s.data && s.data.schedule.preset === 'custom'")
    page.wait_for_timeout(300)
    state = schedule_state(page, node)
    assert state["widgets"]["cfg_highconf"] == 9.5 and state["data"]["schedule"]["cfg_highconf"] == 9.5


def test_every_higfa_input_has_a_tooltip_and_it_shows_on_hover(ui, server):
    page = ui.page
    missing = page.evaluate("""() => {
        const out = [];
        for (const [type, cls] of Object.entries(LiteGraph.registered_node_types)) {
            if (!type.startsWith("HiGFA_")) continue;
            const input = cls.nodeData.input;
            for (const group of ["required", "optional"])
                for (const [name, spec] of Object.entries(input[group] || {}))
                    if (!spec[1]?.tooltip) out.push(`${type}.${name}`);
        }
        return out;
    }""")
    assert missing == []
    load_workflow(page, shipped("higfa-preset-higfa"))
    (node,) = node_ids(page, "HiGFA_Schedule")
    focus_node(page, node)
    x, y = page.evaluate("""id => {
        const n = window.app.graph.getNodeById(id), w = n.widgets.find(w => w.name === "stage_boundary");
        const c = window.app.canvas, rect = c.canvas.getBoundingClientRect();
        const [cx, cy] = c.ds.convertOffsetToCanvas([n.pos[0] + n.size[0] / 3, n.pos[1] + w.last_y + 10]);
        return [rect.left + cx, rect.top + cy];
    }""", node)
    page.mouse.move(x - 5, y)
    page.mouse.move(x, y)
    tooltip = page.wait_for_selector(".node-tooltip", state="visible", timeout=10_000)
    want = server.object_info["HiGFA_Schedule"]["input"]["required"]["stage_boundary"][1]["tooltip"]
    assert re.sub(r"\s+", " ", tooltip.inner_text()).strip() == want
    screenshot(page, ARTIFACTS / "schedule-tooltip.png")
    page.mouse.move(5, 5)


def test_charts_also_draw_in_the_nodes_2_0_renderer(ui):
    """The front end's Vue node renderer ("Nodes 2.0", a user setting) hosts DOM widgets too."""
    page = ui.page
    set_setting(ui.server.url, "Comfy.VueNodes.Enabled", True)
    try:
        page.reload()
        wait_app(page)
        load_workflow(page, shipped("higfa-preset-higfa"))
        wait_all_schedule_charts(page)
        report = graph_report(page)
        assert report["missing"] == [] and report["red"] == []
        assert all(c["in_page"] and c["error"] is None for c in report["schedule_charts"])
        assert all(c["in_page"] for c in report["trace_charts"])
        screenshot_graph(page, ARTIFACTS / "nodes-2.0-higfa-preset-higfa-loaded.png")
    finally:
        set_setting(ui.server.url, "Comfy.VueNodes.Enabled", False)
        page.reload()
        wait_app(page)


def test_every_shipped_workflow_is_queued_by_a_browser_test():
    assert SD15 and sorted(SD15 + [WORLD_WORKFLOW]) == SHIPPED
