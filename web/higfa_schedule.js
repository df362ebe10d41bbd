// HiGFA Schedule node: a live chart of the three strengths over π, and a preset dropdown that fills
// the parameters. Every number comes from the pack's route GET /higfa/schedule (higfa.Schedule in
// Python), so the chart can never disagree with what the sampler does.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { addChartWidget, debounce } from "./lib/chart_widget.js";
import { COLORS, drawLanes, drawMessage } from "./lib/lanes.js";

const NODE = "HiGFA_Schedule";
const CHART = "higfa_schedule_chart";
const CHART_HEIGHT = 190;
const POINTS = 121;
const LOW_HIGH = "0,1";  // confidences at the two edges of the stage-2 modulation band
const X_LABEL = "π: noise-level percent (0 = pure noise, 1 = clean)";

async function getSchedule(params) {
  const response = await api.fetchApi(`/higfa/schedule?${params}`);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

/** Query of the node's current widget values (the route ignores names it does not know). */
function widgetQuery(node) {
  const params = new URLSearchParams();
  for (const w of node.widgets || []) {
    if (w.name === CHART || w.value === undefined || typeof w.value === "object") continue;
    params.set(w.name, String(w.value));
  }
  params.set("points", String(POINTS));
  params.set("confidence", LOW_HIGH);
  return params;
}

function drawSchedule(canvas, state) {
  if (state.error) return drawMessage(canvas, state.error, COLORS.error);
  if (!state.data) return drawMessage(canvas, "loading the schedule…");
  const { progress: x, curves: [low, high], schedule } = state.data;
  const lane = (label, key, color) => ({
    label, color,
    band: { x, lo: low[key], hi: high[key] },
    lines: [{ x, y: low[key], width: 1.8 }, { x, y: high[key], dash: [3, 3], width: 1.2 }],
  });
  drawLanes(canvas, {
    boundary: schedule.stage_boundary,
    xLabel: X_LABEL,
    note: `${schedule.preset} · stage 2: solid = confidence 0, dashed = 1`,
    lanes: [
      lane("text cfg", "cfg", COLORS.cfg),
      lane("contour λ", "contour", COLORS.contour),
      lane("classifier w_cls", "classifier_scale", COLORS.classifier),
    ],
  });
}

function setupScheduleNode(node) {
  const state = { data: null, error: null, request: 0, presetRequest: 0 };
  const chart = addChartWidget(node, CHART, CHART_HEIGHT, (canvas) => drawSchedule(canvas, state));
  state.chart = chart;
  node.higfaChart = state;  // read by the browser tests

  const refresh = debounce(async () => {
    const request = ++state.request;
    try {
      const data = await getSchedule(widgetQuery(node));
      if (request !== state.request) return;  // a newer edit already asked again
      Object.assign(state, { data, error: null });
    } catch (e) {
      if (request !== state.request) return;
      Object.assign(state, { data: null, error: String(e.message || e) });
    }
    chart.redraw();
  }, 150);
  state.refresh = refresh;

  /** A named preset sets every parameter to its values (from the route: the preset's own schedule). */
  async function fillPreset(preset) {
    if (preset === "custom") return;
    const request = ++state.presetRequest;
    const { schedule } = await getSchedule(new URLSearchParams({ preset, points: "2" }));
    if (request !== state.presetRequest) return;  // the user picked another preset meanwhile
    for (const w of node.widgets) {
      if (w.name !== "preset" && w.name in schedule) w.value = schedule[w.name];
    }
    node.setDirtyCanvas(true, true);
  }

  for (const w of node.widgets) {
    if (w === chart) continue;
    const callback = w.callback;
    w.callback = function (value) {
      const result = callback?.apply(this, arguments);
      if (w.name === "preset") fillPreset(value).catch((e) => console.error("HiGFA preset:", e)).finally(refresh);
      else refresh();
      return result;
    };
  }
  refresh();
}

app.registerExtension({
  name: "HiGFA.ScheduleChart",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      setupScheduleNode(this);
      return result;
    };
    // Loading a workflow sets widget values without callbacks: redraw from the loaded values.
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      this.higfaChart?.refresh();
      return result;
    };
  },
});
