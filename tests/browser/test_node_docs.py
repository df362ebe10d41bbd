"""A node help page in the front end's node-docs panel (issue 27, item 9): the node library's "?" on HiGFA Schedule
opens web/docs/HiGFA_Schedule.md, rendered, with its chart loaded from the pack. The pages themselves are
checked against the registered nodes in tests/comfyui/test_node_docs.py.

Screenshot: test-artifacts/browser/node-docs-schedule.png (git-ignored).
"""

from __future__ import annotations

import pytest

from comfy_helpers import ROOT
from comfy_page import screenshot

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "test-artifacts" / "browser"


def test_schedule_help_page_opens_from_the_node_library(ui):
    page = ui.page
    page.evaluate("() => window.app.extensionManager.command.execute('Workspace.ToggleSidebarTab.node-library')")
    search = page.get_by_placeholder("Search Nodes...").first
    search.wait_for(timeout=15_000)
    search.fill("HiGFA Schedule")
    leaf = page.locator(".node-lib-node-container", has_text="HiGFA Schedule").first
    leaf.wait_for(timeout=15_000)
    leaf.hover()
    leaf.locator(".help-button").click()

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
