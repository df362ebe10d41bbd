// A <canvas> chart as a ComfyUI DOM widget (as Detail-Daemon and KJNodes draw schedules on nodes).
// Not serialized: neither into the workflow's widgets_values nor into the prompt.

/**
 * Adds the chart at the end of the node's widgets. `draw(canvas)` repaints it; it runs on resize
 * and whenever the caller calls `widget.redraw()`. The canvas carries data-higfa-chart=<name> and a
 * data-draws counter so tests (and curious users) can see that it repainted.
 */
export function addChartWidget(node, name, minHeight, draw) {
  const box = document.createElement("div");
  box.style.cssText = "width:100%;height:100%;box-sizing:border-box;padding:2px 0;";
  const canvas = document.createElement("canvas");
  canvas.dataset.higfaChart = name;
  canvas.dataset.draws = "0";
  canvas.style.cssText = "width:100%;height:100%;display:block;border-radius:4px;";
  box.appendChild(canvas);

  const widget = node.addDOMWidget(name, "higfa_chart", box, {
    serialize: false,  // not sent to the server
    hideOnZoom: false,
    getMinHeight: () => minHeight,
  });
  widget.serialize = false;  // not stored in widgets_values (keeps the other widgets' positions)
  widget.canvas = canvas;
  widget.redraw = () => {
    if (!canvas.isConnected || canvas.clientWidth === 0) return;  // drawn once it is laid out
    draw(canvas);
    canvas.dataset.draws = String(Number(canvas.dataset.draws) + 1);
  };

  const observer = new ResizeObserver(() => widget.redraw());
  observer.observe(canvas);
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    observer.disconnect();
    return onRemoved?.apply(this, arguments);
  };
  return widget;
}

/** Calls `fn` once, `ms` after the last call (typing in a number field fires many callbacks). */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
