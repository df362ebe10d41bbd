"""docs/method.md's tables are the code's (issue 27, item 12): the parameter defaults are `Schedule()`'s and the
preset table names every preset of `higfa.schedule.PRESETS`."""

from __future__ import annotations

import re
from pathlib import Path

from higfa.schedule import PRESETS, Schedule

METHOD = Path(__file__).resolve().parents[1] / "docs" / "method.md"


def _rows(heading: str) -> list[list[str]]:
    """The cells of the markdown table that follows `heading` in docs/method.md."""
    text = METHOD.read_text()
    start = text.index(heading)
    rows = []
    for line in text[start:].splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # without the header and the |---| line


def _value(text: str):
    text = text.strip("`")
    return {"true": True, "false": False}.get(text, float(text) if re.fullmatch(r"-?\d+(\.\d+)?", text) else text)


def test_method_defaults_are_the_schedules():
    default = Schedule()
    checked = []
    for names, _, values, _ in (r for r in _rows("| parameter | symbol | default | source |") if r[0].startswith("`")):
        fields = re.findall(r"`(\w+)`", names)
        # "4.0 → 7.5", "0.3, 0.9": one value per field, in order; "`rms` (g / rms(g) ...)": the first word
        parts = [p for p in re.split(r"\s*(?:→|,)\s*", values) if p] if len(fields) > 1 else [values.split()[0]]
        assert len(parts) == len(fields), (names, values)
        for field, part in zip(fields, parts):
            assert getattr(default, field) == _value(part), f"docs/method.md: {field} = {part}, code: " \
                                                            f"{getattr(default, field)!r}"
            checked.append(field)
    assert set(checked) == {f for f in Schedule().to_dict() if f != "preset"}


def test_method_preset_table_names_every_preset():
    listed = [re.match(r"`([\w-]+)`", r[0]).group(1) for r in _rows("| preset | stage 1 | stage 2 |")]
    assert sorted(listed) == sorted(PRESETS)


def _world_workflow_presets() -> list[str]:
    import json

    flow = json.loads((METHOD.parents[1] / "workflows" / "higfa-world-compare.json").read_text())
    nodes = sorted((n for n in flow["nodes"] if n["type"] == "HiGFA_Schedule"), key=lambda n: n["pos"][1])
    return [n["widgets_values"][0] for n in nodes]


def test_readme_and_help_page_name_the_world_workflows_presets():
    """README and HiGFA World Loader's help page say which presets `higfa-world-compare` samples (issue 27 item
    12: README said `higfa` where the workflow used `higfa-robust`)."""
    root = METHOD.parents[1]
    presets = _world_workflow_presets()
    spelled = ", ".join(f"`{p}`" for p in presets[:-1]) + f" and `{presets[-1]}`"
    for doc in (root / "README.md", root / "web" / "docs" / "HiGFA_WorldLoader.md"):
        text = re.sub(r"\s+", " ", doc.read_text())
        assert f"with {spelled}" in text, f"{doc.name} must say the world workflow samples with {spelled}"
        row = re.search(r"the row real \| contour \| ([^(]*?)\s*\(", text)
        assert row and [c.strip() for c in row.group(1).split("|")] == presets, (doc.name, row and row.group(1))
