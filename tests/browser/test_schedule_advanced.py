"""HiGFA Schedule in the browser (issue 27, item 10): on a ComfyUI whose inputs carry the `advanced` flag (0.33.0,
front end 1.49.6) the Nodes 2.0 canvas shows the preset, stage boundary, cfg, contour strength and classifier scale
and folds the other 19 under "Show advanced inputs"; on one without it (0.3.75, front end 1.32.9) every input
stays on the node, in the same order.

Screenshot: test-artifacts/browser/schedule-advanced.png (git-ignored).
"""

from __future__ import annotations

import pytest

from comfy_helpers import ROOT
from comfy_page import focus_node, screenshot

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "test-artifacts" / "browser"
FRONT = ["preset", "stage_boundary", "cfg", "contour_strength", "classifier_scale"]


def test_schedule_shows_its_front_inputs_and_folds_the_rest(ui):
    from higfa.schedule import Schedule

    page = ui.page
    inputs = ["preset", *[k for k in Schedule().to_dict() if k != "preset"]]
    page.wait_for_timeout(1000)  # the start-up workflow has settled
    node = page.evaluate("""() => {
        window.app.graph.clear();
        const n = LiteGraph.createNode("HiGFA_Schedule");
        n.pos = [100, 100];
        window.app.graph.add(n);
        return {id: n.id, widgets: n.widgets.filter(w => w.name !== "higfa_schedule_chart")
                                             .map(w => [w.name, !!w.options?.advanced, n.isWidgetVisible(w)])};
    }""")
    assert [w[0] for w in node["widgets"]] == inputs  # widget order of saved workflows
    advanced = [name for name, flag, _ in node["widgets"] if flag]
    if not advanced:  # this ComfyUI has no flag: everything on the node, as before
        assert all(visible for _, _, visible in node["widgets"])
        return
    assert advanced == [k for k in inputs if k not in FRONT]

    setting = "window.app.extensionManager.setting"
    before = page.evaluate(f"() => {setting}.get('Comfy.VueNodes.Enabled')")
    page.evaluate(f"() => {setting}.set('Comfy.VueNodes.Enabled', true)")
    try:
        focus_node(page, node["id"])  # Nodes 2.0 renders the nodes on screen
        card = page.locator(f"[data-node-id='{node['id']}']")
        card.wait_for(timeout=15_000)
        text = card.inner_text()
        assert all(name in text for name in FRONT), text
        assert not any(name in text.split() for name in advanced), text
        screenshot(page, ARTIFACTS / "schedule-advanced.png")
        # the chart redraws as the card settles, so Playwright never finds the button "stable": click it directly
        card.get_by_text("Show advanced inputs").evaluate("e => (e.closest('button') || e).click()")
        page.wait_for_timeout(500)
        assert all(name in card.inner_text() for name in advanced)
    finally:
        page.evaluate(f"v => {setting}.set('Comfy.VueNodes.Enabled', v)", before)
