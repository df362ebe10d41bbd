import dataclasses
import json

import numpy as np
import pytest

from higfa.schedule import PRESETS, Schedule


def test_defaults_follow_method_md():
    s = Schedule()
    assert (s.stage_boundary, s.cfg, s.contour_strength) == (0.7, 7.5, 0.75)
    assert (s.cfg_lowconf, s.cfg_highconf, s.contour_lowconf, s.contour_highconf) == (4.0, 7.5, 0.3, 0.6)
    assert (s.tau_lo, s.tau_hi, s.tau_skip, s.grad_norm, s.measure_every) == (0.3, 0.9, 0.95, "rms", 1)


def test_stage1_is_fixed_and_classifier_free():
    s = Schedule()
    for pi in np.linspace(0, 0.69, 20):
        st = s.strengths(float(pi), prev_confidence=0.1)
        assert st.stage == 1 and (st.cfg, st.contour, st.classifier_scale) == (7.5, 0.75, 0.0)
        assert not st.classifier and not st.backward


@pytest.mark.parametrize("p,cfg,lam,w", [(0.0, 4.0, 0.3, 1.0), (0.3, 4.0, 0.3, 1.0), (0.6, 5.75, 0.45, 0.5),
                                         (0.9, 7.5, 0.6, 0.0), (1.0, 7.5, 0.6, 0.0)])
def test_stage2_confidence_modulation(p, cfg, lam, w):
    st = Schedule().strengths(0.8, prev_confidence=p)
    assert st.stage == 2
    assert st.cfg == pytest.approx(cfg) and st.contour == pytest.approx(lam)
    assert st.classifier_scale == pytest.approx(w)


def test_gate_and_measure_every():
    s = Schedule(measure_every=2)
    assert s.strengths(0.8, 0.5, stage2_index=0).backward
    assert not s.strengths(0.8, 0.5, stage2_index=1).classifier
    assert s.strengths(0.8, 0.96).classifier and not s.strengths(0.8, 0.96).backward  # gated: forward only
    assert Schedule(gating=False, tau_hi=0.99).strengths(0.8, 0.96).backward


def test_none_confidence_in_stage2_means_full_guidance():
    st = Schedule().strengths(0.9, None)
    assert st.classifier_scale == 1.0 and st.cfg == 4.0 and st.backward


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_and_json_round_trip(name):
    s = Schedule.from_preset(name)
    assert s.preset == name
    assert Schedule.from_json(s.to_json()) == s
    assert Schedule.from_json(json.dumps({"preset": name})) == s


def test_presets_behaviour():
    assert Schedule.from_preset("cfg").strengths(0.1, None).contour == 0
    assert not Schedule.from_preset("contour").strengths(0.95, 0.0).classifier
    all_steps = Schedule.from_preset("classifier-all-steps")
    early, late = all_steps.strengths(0.1, 0.99), all_steps.strengths(0.95, 0.99)
    assert early.backward and late.backward and early.classifier_scale == late.classifier_scale == 1.0
    assert late.cfg == 7.5 and late.contour == 0.75  # fixed strengths, no modulation
    # higfa-tuned is higfa-robust at half the push, nothing else: one home for the defences
    robust, tuned = Schedule.from_preset("higfa-robust"), Schedule.from_preset("higfa-tuned")
    assert dataclasses.replace(tuned, preset="higfa-robust", classifier_scale=4.0) == robust
    low = tuned.strengths(0.95, 0.99)  # a confident guide still guides at the fixed scale (no fade, no gate)
    assert low.backward and low.classifier_scale == 2.0 and (low.cfg, low.contour) == (7.5, 0.75)


@pytest.mark.parametrize("kwargs,field", [
    (dict(tau_lo=0.9, tau_hi=0.3), "tau_lo"), (dict(tau_lo=0.5, tau_hi=0.5), "tau_hi"),
    (dict(stage_boundary=1.5), "stage_boundary"), (dict(stage_boundary=-0.1), "stage_boundary"),
    (dict(cfg=-1.0), "cfg"), (dict(classifier_scale=-0.5), "classifier_scale"),
    (dict(contour_lowconf=-0.1), "contour_lowconf"), (dict(measure_every=0), "measure_every"),
    (dict(grad_norm="l2"), "grad_norm"), (dict(tau_skip=1.5), "tau_skip"), (dict(cfg=float("nan")), "cfg")])
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Schedule(**kwargs)


def test_json_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown keys.*cfg_scale"):
        Schedule.from_json('{"cfg_scale": 3}')
    with pytest.raises(ValueError, match="not valid JSON"):
        Schedule.from_json("{")
    with pytest.raises(ValueError, match="unknown schedule preset"):
        Schedule.from_preset("fancy")


def test_curves_for_charts():
    pi = np.linspace(0, 1, 11)
    c = Schedule().curves(pi, confidence=0.0)
    assert c["cfg"][0] == 7.5 and c["cfg"][-1] == 4.0 and c["classifier_scale"][-1] == 1.0


def test_new_fields_are_neutral_by_default_and_validated():
    s = Schedule()
    assert (s.views, s.grad_through_denoiser, s.inner_iterations, s.grad_map) == (1, False, 1, False)
    names = [f.name for f in dataclasses.fields(Schedule)]
    assert names[-6:] == ["views", "view_crop", "view_noise", "grad_through_denoiser", "inner_iterations",
                          "grad_map"]  # at the end: saved workflows keep their widget order
    for field, value, msg in (("views", 0, "from 1 to 64"), ("views", 2.0, "from 1 to 64"),
                              ("inner_iterations", 65, "from 1 to 64"), ("view_crop", 1.0, r"\[0, 1\)"),
                              ("view_noise", -0.1, ">= 0"), ("grad_map", 1, "true or false"),
                              ("grad_through_denoiser", "yes", "true or false")):
        with pytest.raises(ValueError, match=f"'{field}'.*{msg}"):
            Schedule(**{field: value})
    again = Schedule.from_json(Schedule(views=4, inner_iterations=2, grad_map=True).to_json())
    assert again.views == 4 and again.inner_iterations == 2 and again.grad_map


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_one_precedence_rule_for_a_preset_plus_overrides(preset):
    """The CLI (--schedule JSON), the bench (FIELD=VALUE) and the node/route (every input given, the preset
    dropdown having filled them) agree: the defaults, the preset over them, the overrides over both."""
    from higfa.jobs.settings import AugmentSettings

    overrides = {"contour_strength": 0.9, "tau_lo": 0.2, "views": 3}
    want = Schedule.from_preset(preset, **overrides)
    assert want.contour_strength == 0.9 and want.tau_lo == 0.2 and want.views == 3
    for name, value in PRESETS[preset].items():  # the rest of the preset stays
        if name not in overrides:
            assert getattr(want, name) == value
    cli = AugmentSettings(data="d", out="o", model="m", preset=preset,
                          schedule=json.dumps({"preset": preset, **overrides})).build_schedule()
    text = Schedule.parse_overrides(["contour_strength=0.9", "tau_lo=0.2", "views=3"])
    widgets = {**Schedule.from_preset(preset).to_dict(), **overrides}  # the dropdown filled them, then 3 edits
    node = Schedule.from_inputs(preset, {k: v for k, v in widgets.items() if k != "preset"})
    route = Schedule.from_inputs(preset, {k: Schedule.parse_field(k, v) for k, v in
                                          {"contour_strength": "0.9", "tau_lo": "0.2", "views": "3"}.items()})
    assert cli == Schedule.from_preset(preset, **text) == node == route == want
    # where every input is given (node, route), one left at its default takes the preset's value
    untouched = {k: v for k, v in Schedule().replace(views=3).to_dict().items() if k != "preset"}
    assert Schedule.from_inputs(preset, untouched) == Schedule.from_preset(preset, views=3)


def test_schedule_fields_parse_from_text_one_way():
    """`--set modulate=1` (bench) and `?modulate=1` (route) are the same True; bad text names the field."""
    assert Schedule.parse_field("modulate", "1") is True and Schedule.parse_field("modulate", "False") is False
    assert Schedule.parse_field("views", "4") == 4 and Schedule.parse_field("cfg", " 2.5") == 2.5
    assert Schedule.parse_field("grad_norm", "identity") == "identity"
    assert Schedule.parse_overrides(["modulate=1", "tau_lo=0.2"]) == {"modulate": True, "tau_lo": 0.2}
    for name, text, match in (("modulate", "yes", "use true or false"), ("cfg", "nan", "finite"),
                              ("views", "2.5", "'views' = '2.5'"), ("nope", "1", "not a field")):
        with pytest.raises(ValueError, match=match):
            Schedule.parse_field(name, text)
    with pytest.raises(ValueError, match=r"--set 'cfg'"):
        Schedule.parse_overrides(["cfg"])
    assert Schedule.from_inputs("custom", {"cfg": 2.0}).cfg == 2.0
    with pytest.raises(ValueError, match="unknown schedule inputs"):
        Schedule.from_inputs("higfa", {"bogus": 1})
