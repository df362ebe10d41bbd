"""Static checks of the front-end files (no browser needed): ComfyUI imports limited to app/api,
no deprecated legacy imports, no JS copy of the schedule's presets or parameters, and room for the
charts in the shipped workflows' layout."""

from __future__ import annotations

import re

from comfy_helpers import ROOT, load_script

WEB = ROOT / "web"
COMFY_IMPORTS = {"../../scripts/app.js", "../../scripts/api.js"}


def imports(path) -> list[str]:
    text = path.read_text()
    return re.findall(r"""^\s*import\b[^;]*?\bfrom\s+["']([^"']+)["']""", text, re.M) + \
        re.findall(r"""\bimport\(\s*["']([^"']+)["']""", text)


def test_extensions_import_only_app_api_and_their_own_helpers():
    extensions = sorted(WEB.glob("*.js"))
    assert [p.name for p in extensions] == ["higfa_nodes.js", "higfa_schedule.js", "higfa_trace.js"]
    for path in extensions:
        for spec in imports(path):
            local = spec.startswith("./lib/") and (WEB / spec).is_file()
            assert spec in COMFY_IMPORTS or local, f"{path.name}: {spec}"
    for path in sorted((WEB / "lib").glob("*.js")):
        assert all(spec.startswith("./") for spec in imports(path)), f"{path.name} must not import ComfyUI"


def test_no_deprecated_or_internal_front_end_modules():
    for path in WEB.rglob("*.js"):
        text = path.read_text()
        for legacy in ("scripts/ui", "extensions/core", "scripts/domWidget", "scripts/widgets", "scripts/utils"):
            assert legacy not in text, f"{path.name} uses {legacy}"


def test_presets_and_parameters_come_from_the_route_not_from_js():
    from higfa.schedule import PRESETS, Schedule

    text = "\n".join(p.read_text() for p in WEB.rglob("*.js"))
    # What the charts name: curve and trace keys, the boundary and the gate. Every other parameter
    # only passes through as a widget name.
    drawn = ("preset", "cfg", "classifier_scale", "stage_boundary", "tau_skip", "gating")
    tuned = [k for k in Schedule().to_dict() if k not in drawn]
    assert [k for k in tuned if re.search(rf"\b{k}\b", text)] == []
    # "cfg" and "contour" are also curve names and "higfa" the pack's; the other presets must not appear.
    assert [name for name in PRESETS if name not in ("cfg", "contour", "higfa") and name in text] == []


def test_shipped_layout_leaves_room_for_the_charts():
    room = load_script("comfyui_workflows").CHART_ROOM
    for script, nodes in (("higfa_schedule.js", ["HiGFA_Schedule"]),
                          ("higfa_trace.js", ["HiGFA_Sampler", "HiGFA_Trace"])):
        height = int(re.search(r"const CHART_HEIGHT = (\d+);", (WEB / script).read_text()).group(1))
        assert all(room[n] >= height for n in nodes), (script, height, room)
