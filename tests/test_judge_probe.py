"""benchmarks/judge_probe.py's accounting on hand-made traces: the stage-2 shares the gate skipped, the shares
without a backward pass (per sample and per batch step), the final p_guide / p_judge; and its table."""

from benchmarks.judge_probe import ARMS, table, trace_stats
from higfa.trace import Trace, TraceStep


def step(i, stage, w, gated, p=None, pj=None, seconds=1.0):
    return TraceStep(index=i, progress=i / 4, sigma=1.0, stage=stage, cfg=7.5, contour=0.5, classifier_scale=w,
                     confidence=p, grad_norm=None, gated=gated, nan_skipped=[False] * len(w), seconds=seconds,
                     judge_confidence=pj)


def test_stage2_accounting():
    t = Trace(steps=[step(0, 1, [0.0, 0.0], [False, False]),
                     step(1, 2, [4.0, 2.0], [False, False], [0.2, 0.4], [0.1, 0.5], seconds=2.0),
                     step(2, 2, [0.0, 1.0], [True, False], [0.9, 0.6], [0.96, 0.7], seconds=4.0),
                     step(3, 2, [0.0, 0.0], [True, True], [0.99, 0.97], [0.98, 0.96], seconds=6.0)],
              judge="j")
    st = trace_stats([t])
    assert st["stage2_sample_steps"] == 6 and st["gated_sample_steps"] == 3
    assert st["gated_fraction"] == 0.5 and st["no_backward_fraction"] == 0.5
    assert st["batch_steps_without_backward_fraction"] == round(1 / 3, 4)  # only the last step skipped for all
    assert st["mean_stage2_w_cls"] == round(7 / 6, 4) and st["guided_step_seconds"] == 4.0
    assert st["final_p_guide"] == 0.98 and st["final_p_judge"] == 0.97 and st["sampling_fooling_gap"] == 0.01


def test_arms_pair_the_two_shipped_guides_and_the_table_has_a_row_per_arm():
    assert len({a.name for a in ARMS}) == len(ARMS)
    assert all(a.judge is None or a.judge != a.guide for a in ARMS)
    assert {(a.guide, a.judge) for a in ARMS if a.judge} == {("guidance", "guidance_robust"),
                                                              ("guidance_robust", "guidance")}
    arm = {"settings": ARMS[0].settings(), "oracle_species": 0.5, "oracle_family": 1.0, "guide_species": 0.9,
           "guide_fooling_gap": 0.4, "final_p_guide": 0.8, "final_p_judge": None, "gated_fraction": 0.0,
           "no_backward_fraction": 0.1, "batch_steps_without_backward_fraction": 0.0, "mean_stage2_w_cls": 0.5,
           "guided_step_seconds": 1.0}
    lines = table({"arms": {"a": arm, "b": arm}}).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| a | higfa | guidance | – | 0.500 | 1.000 | 0.900 (+0.400)")
