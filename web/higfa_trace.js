// HiGFA Sampler and HiGFA Trace nodes: after a run, the per-step trace the node sends in its `ui`
// output (higfa_trace: Trace.to_dict() of higfa/trace.py) drawn on the node: confidence, the three
// strengths, the stage boundary and the gated steps (backward pass skipped). A judged run (trace.judge)
// draws the guide's p and the judge's p (which drove the schedule) with the gap between them shaded.
import { app } from "../../scripts/app.js";
import { addChartWidget } from "./lib/chart_widget.js";
import { COLORS, drawLanes, drawMessage } from "./lib/lanes.js";

const NODES = ["HiGFA_Sampler", "HiGFA_Trace"];
const CHART = "higfa_trace_chart";
const CHART_HEIGHT = 220;
const X_LABEL = "π: noise-level percent (0 = pure noise, 1 = clean)";

const mean = (values) => values.reduce((a, b) => a + b, 0) / values.length;

function drawTrace(canvas, traces) {
  if (!traces?.length) return drawMessage(canvas, "HiGFA trace: run the workflow to see confidence and strengths per step");
  const trace = traces[traces.length - 1];  // a dataset run samples once per image: show the last
  const steps = trace.steps;
  if (!steps.length) return drawMessage(canvas, "this run recorded no steps");
  const x = steps.map((s) => s.progress);
  const measured = steps.filter((s) => s.confidence);
  const batch = measured.length ? measured[0].confidence.length : 0;
  const confidence = steps.map((s) => (s.confidence ? mean(s.confidence) : null));
  const perSample = [...Array(batch > 1 ? batch : 0).keys()].map((b) => (
    { x, y: steps.map((s) => (s.confidence ? s.confidence[b] : null)), alpha: 0.3, width: 1 }));
  const { summary, schedule } = trace;
  const judged = Boolean(trace.judge);
  const drives = (s) => (judged ? s.judge_confidence : s.confidence);  // the p that set the strengths
  const gated = steps.filter((s) => s.gated.some(Boolean) && drives(s));
  const final = judged
    ? (summary.final_judge_confidence ? `final p_judge ${mean(summary.final_judge_confidence).toFixed(2)}, `
      + `gap ${mean(summary.fooling_gap).toFixed(2)}` : "")
    : (summary.final_confidence ? `final p ${mean(summary.final_confidence).toFixed(2)}` : "no classifier");
  const note = [`${summary.steps} steps`, `${summary.gated_sample_steps} gated`, final,
    traces.length > 1 ? `run ${traces.length}/${traces.length}` : ""].filter(Boolean).join(" · ");
  const confidenceLane = judged ? judgedLane(steps, x, gated, schedule) : {
    label: "confidence p  (× gated)", color: COLORS.confidence, max: 1,
    lines: [...perSample, { x, y: confidence, width: 2 }],
    markers: { x: gated.map((s) => s.progress), y: gated.map((s) => mean(s.confidence)) },
    hlines: schedule.gating ? [{ y: schedule.tau_skip, label: "τ_skip" }] : [],
    empty: measured.length ? null : "classifier off in this run",
  };
  drawLanes(canvas, {
    boundary: schedule.stage_boundary,
    xLabel: X_LABEL,
    note,
    lanes: [
      confidenceLane,
      { label: "text cfg", color: COLORS.cfg, lines: [{ x, y: steps.map((s) => s.cfg), step: true }] },
      { label: "contour λ", color: COLORS.contour, lines: [{ x, y: steps.map((s) => s.contour), step: true }] },
      {
        label: "classifier w_cls", color: COLORS.classifier,
        lines: [{ x, y: steps.map((s) => mean(s.classifier_scale)), step: true }],
      },
    ],
  });
}

/** The confidence lane of a judged run: p_guide (green), p_judge (violet, it drove the ramp and the gate), the
 * gap between their batch means shaded (the guide's fooling, per step), gated steps × on p_judge. */
function judgedLane(steps, x, gated, schedule) {
  const both = steps.filter((s) => s.confidence && s.judge_confidence);
  const guide = steps.map((s) => (s.confidence && s.judge_confidence ? mean(s.confidence) : null));
  const judge = steps.map((s) => (s.judge_confidence ? mean(s.judge_confidence) : null));
  return {
    label: "p_guide · p_judge (drives; × gated) · gap shaded", color: COLORS.judge, max: 1,
    band: { x: both.map((s) => s.progress), lo: both.map((s) => Math.min(mean(s.confidence), mean(s.judge_confidence))),
      hi: both.map((s) => Math.max(mean(s.confidence), mean(s.judge_confidence))), color: COLORS.gap },
    lines: [{ x, y: guide, width: 2, color: COLORS.confidence }, { x, y: judge, width: 2, color: COLORS.judge }],
    markers: { x: gated.map((s) => s.progress), y: gated.map((s) => mean(s.judge_confidence)) },
    hlines: schedule.gating ? [{ y: schedule.tau_skip, label: "τ_skip" }] : [],
    empty: both.length ? null : "classifier off in this run",
  };
}

function setupTraceNode(node) {
  const state = { traces: null };
  node.higfaTrace = state;  // read by the browser tests
  state.chart = addChartWidget(node, CHART, CHART_HEIGHT, (canvas) => drawTrace(canvas, state.traces));
}

app.registerExtension({
  name: "HiGFA.TraceChart",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.includes(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      setupTraceNode(this);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      if (message?.higfa_trace?.length && this.higfaTrace) {
        this.higfaTrace.traces = message.higfa_trace;
        this.higfaTrace.chart.redraw();
      }
      return result;
    };
  },
});
