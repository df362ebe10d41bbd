// One colour for every HiGFA node, so the pack's nodes stand out as one family on the canvas.
// Set at creation: a colour saved in a workflow (a user's choice) still wins when it loads.
import { app } from "../../scripts/app.js";

export const HIGFA_COLOR = { color: "#1f4a4f", bgcolor: "#263a3d" };

app.registerExtension({
  name: "HiGFA.NodeColor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("HiGFA_")) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color = HIGFA_COLOR.color;
      this.bgcolor = HIGFA_COLOR.bgcolor;
      return result;
    };
  },
});
