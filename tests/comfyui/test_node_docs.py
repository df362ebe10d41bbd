"""Node help pages (issue 27, item 9): the ComfyUI front end shows `WEB_DIRECTORY/docs/<node id>.md` (fetched as
/extensions/<pack>/docs/<node id>.md, after /extensions/<pack>/docs/<node id>/<locale>.md) in its node-docs
panel. Every node the running server registers for this pack has a page; each page names every input, shows
pictures the server serves, and names shipped workflows that really contain the node. The browser test
(tests/browser/test_node_docs.py) opens one in the panel."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

from comfy_helpers import ROOT, SHIPPED, WORKFLOWS
from higfa.schedule import PRESETS

pytestmark = pytest.mark.comfyui
DOCS = ROOT / "web" / "docs"
PACK = "comfyui-higfa"


def our_nodes(server) -> dict:
    return {k: v for k, v in server.object_info.items() if v["python_module"].split(".")[-1] == PACK}


def workflows_with(node_id: str) -> set[str]:
    return {name for name in SHIPPED
            if any(n["type"] == node_id for n in json.loads((WORKFLOWS / f"{name}.json").read_text())["nodes"])}


def test_every_registered_node_has_a_page_and_every_page_a_node(server):
    nodes = our_nodes(server)
    assert len(nodes) >= 13, sorted(nodes)
    pages = {p.stem for p in DOCS.glob("*.md")}
    assert pages == set(nodes), f"missing pages: {sorted(set(nodes) - pages)}; pages of no node: " \
                                f"{sorted(pages - set(nodes))}"


def test_each_page_names_its_node_every_input_and_real_workflows(server):
    for node_id, info in sorted(our_nodes(server).items()):
        text = (DOCS / f"{node_id}.md").read_text()
        assert text.startswith(f"# {info['display_name']}\n"), f"{node_id}: title is not its display name"
        inputs = [k for group in ("required", "optional") for k in info["input"].get(group, {})]
        missing = [k for k in inputs if f"**{k}**" not in text]
        assert missing == [], f"{node_id}.md says nothing about inputs {missing}"
        section = text.split("## Workflow", 1)
        assert len(section) == 2, f"{node_id}.md has no Workflows section"
        named = set(re.findall(r"`(higfa-[a-z0-9-]+)`", section[1])) - set(PRESETS)  # `higfa-robust` is a preset
        if "`higfa-preset-*`" in section[1]:
            named |= {n for n in SHIPPED if n.startswith("higfa-preset-")}
        really = workflows_with(node_id)
        if really:
            assert named and named <= really, f"{node_id}.md names {sorted(named)}; it is in {sorted(really)}"
        else:
            assert "No shipped workflow" in section[1], f"{node_id} is in no workflow: say so"


def test_pictures_exist_and_the_server_serves_them(server):
    linked = set()
    for page in sorted(DOCS.glob("*.md")):
        for src in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert not src.startswith(("/", "http")), f"{page.name}: {src} must be relative to docs/"
            assert (DOCS / src).is_file(), f"{page.name}: {src} does not exist"
            linked.add(src)
    assert {"images/schedule.png", "images/contour.png", "images/trace.png"} <= linked
    unused = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.png")} - linked
    assert unused == set(), f"pictures no page shows: {sorted(unused)}"
    for src in sorted(linked) + ["HiGFA_Schedule.md"]:
        with urllib.request.urlopen(f"{server.url}/extensions/{PACK}/docs/{src}", timeout=30) as r:
            assert r.status == 200 and r.read() == (DOCS / src).read_bytes(), src
    with pytest.raises(urllib.error.HTTPError):  # the front end falls back from the locale page to ours
        urllib.request.urlopen(f"{server.url}/extensions/{PACK}/docs/HiGFA_Schedule/en.md", timeout=30)


def test_schedule_page_names_every_preset():
    text = (DOCS / "HiGFA_Schedule.md").read_text()
    assert [name for name in [*PRESETS, "custom"] if f"`{name}`" not in text] == []
