"""HiGFA Schedule: the two-stage schedule of docs/method.md as a node (a preset plus every parameter)."""

from __future__ import annotations

import dataclasses

from ..higfa.schedule import (BATCH_CONFIDENCE, CLASSIFIER_STEPS, GRAD_NORMS, PRESET_DESCRIPTIONS, PRESETS,
                              SCHEDULE_DESCRIPTION, Schedule)
from ._comfy import CATEGORY, SCHEDULE, advanced, io

# "custom": every input as set. A named preset sets the switches that define its ablation; inputs changed from
# their defaults override it (Schedule.from_inputs).
PRESET_NAMES = [*PRESETS, "custom"]
# Each preset says what it does, whether the confidence modulates and gates included (higfa.schedule's one list).
PRESET_TOOLTIP = " ".join(f"{name}: {text}." for name, text in PRESET_DESCRIPTIONS.items()) + (
    " custom: every input as set. A named preset fixes the switches that define it; the other inputs tune it.")
_DEFAULT = Schedule()

TOOLTIPS = {
    "stage_boundary": "π_c: noise level where stage 2 (classifier + confidence modulation) starts. A noise-level "
                      "percent like start_percent, not a fraction of steps: 0.7 is roughly the last third of "
                      "DDIM steps.",
    "cfg": "Text CFG scale in stage 1 (and in stage 2 when modulate is off).",
    "contour_strength": "ControlNet (contour) strength in stage 1 (and in stage 2 when modulate is off). "
                        "0 skips the ControlNet.",
    "cfg_lowconf": "Stage-2 text CFG when the classifier's confidence is at or below tau_lo.",
    "cfg_highconf": "Stage-2 text CFG when the confidence is at or above tau_hi.",
    "contour_lowconf": "Stage-2 contour strength at low confidence (loosen the structure to let the class show).",
    "contour_highconf": "Stage-2 contour strength at high confidence.",
    "classifier_scale": "Classifier guidance at zero confidence (w_cls max); it fades to 0 as the confidence "
                        "reaches tau_hi. 0 disables the classifier.",
    "tau_lo": "Confidence where the ramp starts (below it: low-confidence strengths).",
    "tau_hi": "Confidence where the ramp ends (above it: high-confidence strengths, no classifier push).",
    "tau_skip": "Gate: when the previous step's confidence is at least this, the backward pass is skipped "
                "(only a cheap forward measures the confidence).",
    "grad_norm": "rms: classifier gradient divided by its RMS (scale-free across classifiers); identity: raw.",
    "measure_every": "Run the classifier on every m-th stage-2 step only; in between the confidence carries over.",
    "classifier_steps": "When the classifier runs: off, stage2 (the method), or all steps.",
    "modulate": "Stage-2 strengths follow the classifier's confidence. Off: fixed stage-1 strengths.",
    "gating": "Skip the classifier backward pass once the sample is confidently the target class.",
    "batch_confidence": "How a batch's confidences set the shared cfg and contour strength (one number per "
                        "model call).",
    "views": "Average the classifier's gradient and confidence over this many random views (crop, flip, "
             "noise) of the decoded image: harder to fool. 1 = the image itself (no views).",
    "view_crop": "With views > 1: a view keeps a random 1 - view_crop .. 1 of the image's side, at a random place.",
    "view_noise": "With views > 1: standard deviation of the noise added to each view (image in [0, 1]).",
    "grad_through_denoiser": "Take the gradient through the diffusion model too (of x̂0(x), not x̂0). Costs a "
                             "model backward per step. Not supported inside ComfyUI (the CLI supports it).",
    "inner_iterations": "Gradient steps per sampling step (each w_cls·σ²/n, at the updated x̂0).",
    "grad_map": "Save a 16×16 map of where the classifier's gradient acts per step in the trace (drawn as a "
                "strip under the trace plot).",
}
_COMBOS = {"grad_norm": GRAD_NORMS, "classifier_steps": CLASSIFIER_STEPS, "batch_confidence": BATCH_CONFIDENCE}
_RANGES = {"cfg": 30.0, "cfg_lowconf": 30.0, "cfg_highconf": 30.0, "contour_strength": 2.0, "contour_lowconf": 2.0,
           "contour_highconf": 2.0, "classifier_scale": 20.0, "view_crop": 0.9, "view_noise": 0.5}
_INT_MAX = {"measure_every": 100, "views": 64, "inner_iterations": 64}
FIELDS = [f.name for f in dataclasses.fields(Schedule) if f.name != "preset"]


# In front (with the preset); every other input is "advanced": newer front ends fold those away. The order of the
# inputs (saved workflows' widget order) stays FIELDS's.
FRONT = ("stage_boundary", "cfg", "contour_strength", "classifier_scale")


def _input(name: str):
    default, tip, more = getattr(_DEFAULT, name), TOOLTIPS[name], advanced(name not in FRONT)
    if name in _COMBOS:
        return io.Combo.Input(name, options=list(_COMBOS[name]), default=default, tooltip=tip, **more)
    if isinstance(default, bool):
        return io.Boolean.Input(name, default=default, tooltip=tip, **more)
    if isinstance(default, int):
        return io.Int.Input(name, default=default, min=1, max=_INT_MAX[name], tooltip=tip, **more)
    return io.Float.Input(name, default=default, min=0.0, max=_RANGES.get(name, 1.0), step=0.01, tooltip=tip,
                          **more)


def build_schedule(preset: str, **values) -> Schedule:
    """The node's schedule (also the /higfa/schedule route's): `Schedule.from_inputs`, the core's one rule
    for a preset plus overrides (an input left at its default takes the preset's value, any other input wins;
    the preset dropdown fills the widgets from the preset, web/higfa_schedule.js). Raises ValueError naming a
    bad input."""
    if preset not in PRESET_NAMES:
        raise ValueError(f"schedule preset {preset!r}: choose one of {PRESET_NAMES}")
    return Schedule.from_inputs(preset, values)


class HiGFASchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_Schedule",
            display_name="HiGFA Schedule",
            category=CATEGORY,
            description=SCHEDULE_DESCRIPTION,  # which presets modulate and gate, from PRESETS
            inputs=[io.Combo.Input("preset", options=PRESET_NAMES, default="higfa",
                                   tooltip=PRESET_TOOLTIP),
                    *[_input(name) for name in FIELDS]],
            outputs=[SCHEDULE.Output(display_name="schedule"),
                     io.String.Output(display_name="json", tooltip="The effective schedule as JSON.")],
        )

    @classmethod
    def execute(cls, preset: str, **values) -> io.NodeOutput:
        schedule = build_schedule(preset, **values)
        return io.NodeOutput(schedule, schedule.to_json())
