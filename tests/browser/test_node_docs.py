"""A node help page in the front end's node-docs panel (issue 27, item 9): the node library's "?" on HiGFA Schedule
(front end 1.32.9, ComfyUI 0.3.75) or the selected node's Info tab (1.49.6, ComfyUI 0.33.0) opens
web/docs/HiGFA_Schedule.md, rendered, with its chart loaded from the pack. The pages themselves are
checked against the registered nodes in tests/comfyui/test_node_docs.py.

Screenshot: test-artifacts/browser/node-docs-schedule.png (git-ignored).
"""

from __future__ import annotations

import pytest

from comfy_helpers import ROOT
from comfy_page import screenshot

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "test-artifacts" / "browser"


def _open_from_node_library(page) -> None:
    """Front ends up to ~1.3x: the node library's "?" on the node (the help page replaces the library)."""
    page.evaluate("() => window.app.extensionManager.command.execute('Workspace.ToggleSidebarTab.node-library')")
    search = page.get_by_placeholder("Search Nodes...").first
    search.wait_for(timeout=15_000)
    search.fill("HiGFA Schedule")
    leaf = page.locator(".node-lib-node-container", has_text="HiGFA Schedule").first
    leaf.wait_for(timeout=15_000)
    leaf.hover()
    leaf.locator(".help-button").click()


def _open_from_properties_panel(page) -> None:
    """Newer front ends (1.49.6 with ComfyUI 0.33.0): the selected node's Info tab in the properties panel."""
    title = page.evaluate("""() => {
        const n = LiteGraph.createNode("HiGFA_Schedule"), c = window.app.canvas;
        n.pos = [200, 200];
        window.app.graph.add(n);
        c.setDirty(true, true);
        const p = c.ds.convertOffsetToCanvas([n.pos[0] + 60, n.pos[1] - 15]), r = c.canvas.getBoundingClientRect();
        return [r.left + p[0], r.top + p[1]];
    }""")
    page.wait_for_timeout(300)
    page.mouse.click(*title)  # selected as a user selects it (the panel's Info tab is for the selected node)
    page.get_by_role("button", name="Toggle properties panel").first.click()
    tab = page.get_by_role("tab", name="Info").first
    tab.wait_for(timeout=15_000)
    tab.evaluate("b => b.click()")  # 0.33.0 with this repo's older templates package shows version toasts over it


def test_schedule_help_page_opens_in_the_node_docs_panel(ui):
    page = ui.page
    if page.get_by_role("button", name="Toggle properties panel").count():
        _open_from_properties_panel(page)
    else:
        _open_from_node_library(page)

    content = page.locator(".node-help-content")
    content.get_by_text("The two stages of HiGFA").wait_for(timeout=15_000)
    # Rendered markdown (a heading and the input list), not the generic fallback from the node's tooltips
    assert content.locator("h2", has_text="The inputs in front").count() == 1
    assert content.locator("strong", has_text="classifier_scale").count() >= 1
    chart = content.locator("img").first
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=chart.element_handle(),
                           timeout=15_000)
    src = chart.evaluate("img => img.src")
    assert src.endswith("/extensions/comfyui-higfa/docs/images/schedule.png"), src
    assert (200, src) in ui.served
    screenshot(page, ARTIFACTS / "node-docs-schedule.png")
