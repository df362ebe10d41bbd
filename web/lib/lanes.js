// Stacked chart lanes on a <canvas> that share one x axis: sampling progress π in [0, 1].
// Pure drawing (no ComfyUI imports): the numbers come from the pack's Python route or trace.

export const COLORS = {
  cfg: "#5b9bd5",
  contour: "#f0a040",
  classifier: "#e0605a",
  confidence: "#6cc070",
  judge: "#b58cf0",  // the judge's p (a classifier that did not guide)
  gap: "#e0605a",  // between the guide's and the judge's p: the guide's fooling
  text: "#c8c8c8",
  muted: "#8a8a8a",
  grid: "rgba(255,255,255,0.10)",
  lane: "rgba(0,0,0,0.22)",
  error: "#ff7070",
};

const PAD = { left: 40, right: 8, top: 28, bottom: 28 };  // top: a note line, then the boundary label
const GAP = 5;

/** Matches the canvas bitmap to its CSS box (sharp on HiDPI); returns its CSS size. */
export function fitCanvas(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const width = Math.max(canvas.clientWidth, 60);
  const height = Math.max(canvas.clientHeight, 60);
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx, width, height };
}

/** A centred message instead of a chart (loading, errors, "run the workflow"). */
export function drawMessage(canvas, text, color = COLORS.muted) {
  const { ctx, width, height } = fitCanvas(canvas);
  ctx.fillStyle = COLORS.lane;
  ctx.fillRect(0, 0, width, height);
  ctx.fillStyle = color;
  ctx.font = "12px sans-serif";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  wrap(ctx, text, width - 16).forEach((line, i, all) =>
    ctx.fillText(line, width / 2, height / 2 + (i - (all.length - 1) / 2) * 15));
}

/**
 * spec: {boundary, xLabel, note, lanes: [{label, color, max, band: {x, lo, hi, color}, hlines: [{y, label}],
 *        lines: [{x, y, dash, width, alpha, step}], markers: {x, y, label}, empty}]}
 */
export function drawLanes(canvas, spec) {
  const { ctx, width, height } = fitCanvas(canvas);
  const plotW = width - PAD.left - PAD.right;
  const laneH = (height - PAD.top - PAD.bottom - GAP * (spec.lanes.length - 1)) / spec.lanes.length;
  const X = (pi) => PAD.left + Math.min(Math.max(pi, 0), 1) * plotW;
  ctx.font = "10px sans-serif";

  spec.lanes.forEach((lane, i) => {
    const top = PAD.top + i * (laneH + GAP);
    const max = laneMax(lane);
    const Y = (v) => top + laneH - (Math.min(Math.max(v, 0), max) / max) * (laneH - 2);
    ctx.fillStyle = COLORS.lane;
    ctx.fillRect(PAD.left, top, plotW, laneH);
    ctx.fillStyle = COLORS.muted;
    ctx.textAlign = "right";
    ctx.textBaseline = "top";
    ctx.fillText(fmt(max), PAD.left - 4, top);
    ctx.textBaseline = "bottom";
    ctx.fillText("0", PAD.left - 4, top + laneH);
    for (const h of lane.hlines || []) drawHLine(ctx, PAD.left, plotW, Y(h.y), h.label);
    if (lane.band) drawBand(ctx, lane.band, X, Y, lane.band.color || lane.color);
    for (const line of lane.lines || []) drawLine(ctx, line, X, Y, line.color || lane.color);
    if (lane.markers) drawMarkers(ctx, lane.markers, X, Y);
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillStyle = "rgba(20,20,20,0.75)";  // keeps the label readable over a line at the lane's top
    ctx.fillRect(PAD.left + 2, top + 1, ctx.measureText(lane.label).width + 4, 12);
    ctx.fillStyle = lane.color;
    ctx.fillText(lane.label, PAD.left + 4, top + 2);
    if (lane.empty) {
      ctx.fillStyle = COLORS.muted;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText(lane.empty, PAD.left + plotW / 2, top + laneH / 2);
    }
  });

  const bottom = PAD.top + spec.lanes.length * (laneH + GAP) - GAP;
  if (spec.boundary != null) drawBoundary(ctx, X(spec.boundary), bottom, spec.boundary, width);
  drawXAxis(ctx, X, bottom, width, spec.xLabel);
  if (spec.note) {
    ctx.fillStyle = COLORS.muted;
    ctx.textAlign = "right";
    ctx.textBaseline = "top";
    ctx.fillText(spec.note, width - PAD.right, 2);
  }
}

function laneMax(lane) {
  if (lane.max) return lane.max;
  let max = 0;
  for (const line of lane.lines || []) for (const v of line.y) if (v != null) max = Math.max(max, v);
  if (lane.band) for (const v of lane.band.lo.concat(lane.band.hi)) max = Math.max(max, v);
  return max > 0 ? max * 1.1 : 1;
}

function drawBand(ctx, band, X, Y, color) {
  ctx.beginPath();
  band.x.forEach((x, j) => (j ? ctx.lineTo(X(x), Y(band.hi[j])) : ctx.moveTo(X(x), Y(band.hi[j]))));
  for (let j = band.x.length - 1; j >= 0; j--) ctx.lineTo(X(band.x[j]), Y(band.lo[j]));
  ctx.closePath();
  ctx.globalAlpha = 0.28;
  ctx.fillStyle = color;
  ctx.fill();
  ctx.globalAlpha = 1;
}

function drawLine(ctx, line, X, Y, color) {
  ctx.beginPath();
  let started = false;
  line.x.forEach((x, j) => {
    const v = line.y[j];
    if (v == null) return;
    if (!started) ctx.moveTo(X(x), Y(v));
    else if (line.step) ctx.lineTo(X(x), Y(line.y[j - 1] ?? v));  // steps-post: hold the last value
    if (started) ctx.lineTo(X(x), Y(v));
    started = true;
  });
  ctx.setLineDash(line.dash || []);
  ctx.globalAlpha = line.alpha ?? 1;
  ctx.lineWidth = line.width ?? 1.5;
  ctx.strokeStyle = color;
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.globalAlpha = 1;
}

function drawMarkers(ctx, m, X, Y) {
  ctx.strokeStyle = "#ffffff";
  ctx.lineWidth = 1.2;
  m.x.forEach((x, j) => {
    const cx = X(x), cy = Y(m.y[j]);
    ctx.beginPath();
    ctx.moveTo(cx - 3, cy - 3); ctx.lineTo(cx + 3, cy + 3);
    ctx.moveTo(cx + 3, cy - 3); ctx.lineTo(cx - 3, cy + 3);
    ctx.stroke();
  });
}

function drawHLine(ctx, left, w, y, label) {
  ctx.setLineDash([2, 3]);
  ctx.strokeStyle = COLORS.grid;
  ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + w, y); ctx.stroke();
  ctx.setLineDash([]);
  ctx.fillStyle = COLORS.muted;
  ctx.textAlign = "right";
  ctx.textBaseline = "top";  // below the line: markers near it sit above
  ctx.fillText(label, left + w - 2, y + 1);
}

function drawBoundary(ctx, x, bottom, value, width) {
  ctx.setLineDash([4, 3]);
  ctx.strokeStyle = COLORS.text;
  ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(x, PAD.top - 2); ctx.lineTo(x, bottom); ctx.stroke();
  ctx.setLineDash([]);
  const label = `π_c ${fmt(value)} · stage 2 ▸`;
  const fitsRight = x + 3 + ctx.measureText(label).width <= width - PAD.right;
  ctx.fillStyle = COLORS.text;
  ctx.textBaseline = "bottom";
  ctx.textAlign = fitsRight ? "left" : "right";
  ctx.fillText(label, fitsRight ? x + 3 : x - 3, PAD.top - 3);
}

function drawXAxis(ctx, X, bottom, width, label) {
  ctx.fillStyle = COLORS.muted;
  ctx.textBaseline = "top";
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    ctx.textAlign = t === 0 ? "left" : t === 1 ? "right" : "center";
    ctx.fillText(String(t), X(t), bottom + 2);
  }
  ctx.textAlign = "center";
  ctx.fillStyle = COLORS.text;
  ctx.fillText(label, PAD.left + (width - PAD.left - PAD.right) / 2, bottom + 14);
}

function fmt(v) {
  return Math.abs(v) >= 10 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(1) : v.toFixed(2);
}

function wrap(ctx, text, width) {
  const lines = [];
  let line = "";
  for (const word of String(text).split(/\s+/)) {
    const next = line ? `${line} ${word}` : word;
    if (ctx.measureText(next).width > width && line) { lines.push(line); line = word; } else line = next;
  }
  return line ? [...lines, line] : lines;
}
