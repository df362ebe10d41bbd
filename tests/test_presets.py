"""Presets that say what they do (issue 25 item 5): every schedule preset's one-line description says whether the
classifier confidence modulates the strengths and gates the backward pass, as its fields do; the judged preset
has both on; names stored in saved workflows keep loading."""

import json

import pytest

from higfa.schedule import PRESET_DESCRIPTIONS, PRESETS, Schedule


def test_every_preset_has_a_description():
    assert list(PRESET_DESCRIPTIONS) == list(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_description_says_whether_the_confidence_modulates_and_gates(name):
    s, text = Schedule.from_preset(name), PRESET_DESCRIPTIONS[name]
    if not s.uses_classifier:
        assert "no classifier" in text
    elif s.modulate and s.gating:
        assert "modulat" in text and "gat" in text and "neither" not in text
    else:
        assert not s.modulate and not s.gating and "neither modulates nor gates" in text


def test_the_judged_preset_modulates_and_gates_with_the_robust_views():
    judged, robust = Schedule.from_preset("higfa-judged"), Schedule.from_preset("higfa-robust")
    assert judged.modulate and judged.gating and judged.uses_classifier
    assert (judged.views, judged.view_crop, judged.view_noise) == (robust.views, robust.view_crop, robust.view_noise)
    assert "judge" in PRESET_DESCRIPTIONS["higfa-judged"]


@pytest.mark.parametrize("name", ["higfa", "higfa-robust", "higfa-tuned"])
def test_names_stored_in_saved_workflows_keep_loading(name):
    saved = json.dumps({"preset": name})  # a schedule JSON as saved workflows and --schedule files hold it
    assert Schedule.from_json(saved) == Schedule.from_preset(name)
    assert Schedule.from_preset(name).to_dict()["preset"] == name


def test_the_schedule_nodes_description_says_which_presets_modulate():
    """HiGFA Schedule's description (nodes/schedule.py uses SCHEDULE_DESCRIPTION) names each classifier preset
    in the clause that fits it: the confidence modulating and gating, or kept fixed."""
    import re

    from higfa.schedule import SCHEDULE_DESCRIPTION

    clauses = SCHEDULE_DESCRIPTION.split("; with modulate on")[1].split("skips the backward pass;")
    modulating, fixed = (set(re.findall(r"[\w-]+", c)) for c in clauses)
    for name in PRESETS:
        s = Schedule.from_preset(name)
        if s.uses_classifier:
            assert name in (modulating if s.modulate else fixed) and name not in (fixed if s.modulate else modulating)
            assert s.gating == s.modulate, name  # the description says gating goes with modulation


def test_readme_names_every_preset_and_which_modulate():
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| HiGFA Schedule |"))
    assert [n for n in [*PRESETS, "custom"] if f"`{n}`" not in row] == []
    said = re.search(r"modulates and gates in ([^,]*),", row).group(1)
    assert sorted(re.findall(r"`([\w-]+)`", said)) == sorted(n for n in PRESETS if Schedule.from_preset(n).modulate)
