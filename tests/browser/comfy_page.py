"""Driving the ComfyUI front end in headless Chromium (Playwright for Python, Debian's Chromium).

No browser download: Playwright launches /usr/bin/chromium (scripts/browser_setup.sh installs it).
The front end is reached only through what a user or an extension has: `window.app`, the page's DOM
and the server's HTTP API.
"""

from __future__ import annotations

import copy
import json
import tempfile
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}
WORLD_WORKFLOW = "higfa-world-compare"  # queued by test_world_workflow.py (the others by test_frontend.py)
# Server-side user settings: no first-run Templates dialog over the canvas; the shipped workflows name
# SD 1.5 files the test server does not have (their loaders are swapped for tiny ones before queueing).
# Screenshots: no minimap over the graph, and text drawn at every zoom (no low-detail rendering).
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False,
            "Comfy.Minimap.Visible": False, "LiteGraph.Canvas.MinFontSizeForLOD": 0}
GRAPH_VIEWPORT = {"width": 2400, "height": 1350}  # whole-graph screenshots
# A browser-local flag (not a setting): the "Introducing Nodes 2.0" banner stays dismissed.
INIT_SCRIPT = "localStorage.setItem('vueNodesBannerDismissed', 'true');"
# (node type, widgets_values): the front end gives every INT "seed" a "control after generate" value.
TINY_LOADERS = {"CheckpointLoaderSimple": ("HiGFATest_TinyCheckpoint", [0, "fixed"]),
                "ControlNetLoader": ("HiGFATest_TinyControlNet", [3, "fixed"])}
FAMILY_LOADERS = {"CheckpointLoaderSimple": "HiGFATest_TinyFamilyCheckpoint",
                  "ControlNetLoader": "HiGFATest_TinyFamilyControlNet"}  # widgets: family, seed, control


def set_setting(url: str, key: str, value) -> None:
    """A user setting, stored by the server (the page reads settings when it boots)."""
    req = urllib.request.Request(f"{url}/settings/{key}", data=json.dumps(value).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).close()


def apply_settings(url: str) -> None:
    for key, value in SETTINGS.items():
        set_setting(url, key, value)


def wait_app(page) -> None:
    page.wait_for_function("window.app && window.app.graph && window.app.canvas && window.app.extensions?.length",
                           timeout=90_000)
    page.wait_for_load_state("networkidle")  # the default graph finishes loading first


# Polled on a timer: the first call (of a token) asks for an animation frame, later calls see whether it came.
FRAME_PROBE = """token => {
    const f = window.__higfaFrame;
    if (f?.token !== token) {
        const ask = window.__higfaFrame = {token, seen: false};
        requestAnimationFrame(() => { ask.seen = true; });
        return false;
    }
    return f.seen;
}"""


def draws_frames(page, timeout_ms: int = 20_000) -> bool:
    """Whether the page still draws: an animation frame within `timeout_ms` (a blocked page, a crashed or
    closed one answer False; none of them hangs). The canvas, the DOM widgets' layout and every screenshot
    wait on frames; a page that stopped drawing (seen once on a loaded CI machine: every later raf-polled
    wait and screenshot timed out) still answers evaluate() but draws nothing."""
    import uuid

    try:
        page.wait_for_function(FRAME_PROBE, arg=uuid.uuid4().hex, polling=50, timeout=timeout_ms)
        return True
    except Exception:  # timed out, crashed or closed page
        return False


class ChromiumApp:
    """Headless Chromium with the ComfyUI app booted in one page (`.page`); console errors/warnings, page
    errors and renderer crashes go to `console`, (status, url) of every response to `served`.
    `relaunch()` replaces the browser and the page (the test fixture does so when a page stopped drawing, so
    one stalled browser fails one test, not every test after it)."""

    def __init__(self, url: str, console: list[str], served: list[tuple[int, str]] | None = None):
        from playwright.sync_api import sync_playwright

        self.url, self.console, self.served = url, console, served
        apply_settings(url)
        self._pw = sync_playwright().start()
        self._profile = None
        self._ctx = None
        self.page = None
        try:
            self._launch()
        except BaseException:
            self.close()
            raise

    def _launch(self) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="higfa-chromium-")
        self._ctx = self._pw.chromium.launch_persistent_context(
            self._profile.name, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport=VIEWPORT)
        self._ctx.add_init_script(INIT_SCRIPT)
        page = self._ctx.new_page()
        console, served = self.console, self.served
        page.on("console", lambda m: m.type in ("error", "warning")
                and console.append(f"{m.type}: {m.text} (at {m.location.get('url', '?')})"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.on("crash", lambda _: console.append("crash: the page's renderer crashed"))
        if served is not None:
            page.on("response", lambda r: served.append((r.status, r.url)))
        page.goto(self.url + "/")
        wait_app(page)
        self.page = page

    def _close_browser(self) -> None:
        if self._ctx is not None:
            try:
                self._ctx.close()
            except Exception:  # a browser that died is already closed
                pass
            self._ctx = None
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    def relaunch(self) -> None:
        self.console.append("warning: the page stopped drawing frames; Chromium was relaunched")
        self._close_browser()
        self._launch()

    def close(self) -> None:
        self._close_browser()
        self._pw.stop()


def tiny(workflow: dict) -> dict:
    """The workflow with the stock model loaders swapped for the test pack's tiny ones (same output
    types; the SDXL / SD3 workflows' for the tiny models of their family) and 64-px latents: it runs on a
    CPU in seconds."""
    from comfy_helpers import model_family

    wf = copy.deepcopy(workflow)
    for node in wf["nodes"]:
        kind = node["type"]
        if kind in TINY_LOADERS:
            family = model_family(node["widgets_values"][0])
            if family:
                node["type"] = FAMILY_LOADERS[kind]
                node["widgets_values"] = [family, 0, "fixed"]
            else:
                node["type"], node["widgets_values"] = TINY_LOADERS[kind][0], list(TINY_LOADERS[kind][1])
            node["properties"] = {"Node name for S&R": node["type"]}
        elif kind in ("EmptyLatentImage", "EmptySD3LatentImage"):
            node["widgets_values"][:2] = [64, 64]
    return wf


def reseed(page, seed: int) -> None:
    """Sets every seed widget of the loaded graph (not the tiny loaders'): ComfyUI answers an unchanged
    node from its cache without sending its images again, and the page shows outputs it receives."""
    page.evaluate("""seed => {
        for (const n of window.app.graph.nodes)
            for (const w of n.widgets || [])
                if (["seed", "noise_seed"].includes(w.name) && !n.type.startsWith("HiGFATest_")) w.value = seed;
    }""", seed)


def load_workflow(page, workflow: dict) -> None:
    page.evaluate("async wf => { await window.app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(300)  # one frame for the DOM widgets to lay out


def fit_view(page) -> None:
    """Frames the whole graph (as the "fit view" key does). The page loads a node's images only
    once the node is on screen."""
    page.evaluate("""() => {
        const nodes = window.app.graph.nodes, c = window.app.canvas, el = c.canvas;
        const x0 = Math.min(...nodes.map(n => n.pos[0])) - 20, y0 = Math.min(...nodes.map(n => n.pos[1])) - 50;
        const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])) + 20;
        const y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1])) + 20;
        const scale = Math.min(el.clientWidth / (x1 - x0), el.clientHeight / (y1 - y0));
        c.ds.scale = scale;
        c.ds.offset = [el.clientWidth / scale / 2 - (x0 + x1) / 2, el.clientHeight / scale / 2 - (y0 + y1) / 2];
        c.setDirty(true, true);
    }""")
    page.wait_for_timeout(300)


def screenshot_graph(page, path: Path) -> Path:
    """The whole graph on a larger viewport, then the normal viewport again."""
    page.set_viewport_size(GRAPH_VIEWPORT)
    page.wait_for_timeout(300)
    fit_view(page)
    page.wait_for_timeout(500)  # images of nodes that just came on screen
    screenshot(page, path)
    page.set_viewport_size(VIEWPORT)
    page.wait_for_timeout(300)
    fit_view(page)
    return path


def focus_node(page, node_id: int, scale: float = 1.0) -> None:
    """Centres one node at `scale` (for close-up screenshots)."""
    page.evaluate("""([id, scale]) => {
        const n = window.app.graph.getNodeById(id), c = window.app.canvas, el = c.canvas;
        c.ds.scale = scale;
        c.ds.offset = [el.clientWidth / scale / 2 - n.pos[0] - n.size[0] / 2,
                       el.clientHeight / scale / 2 - n.pos[1] - n.size[1] / 2];
        c.setDirty(true, true);
    }""", [node_id, scale])
    page.wait_for_timeout(300)


def screenshot_chart(page, node_id: int, path: Path, scale: float = 2.0) -> Path:
    """A close-up of a node's HiGFA chart: the view zoomed to `scale` and moved until the chart's canvas
    sits in the middle of the page (measured on the page), then a screenshot of that element."""
    focus_node(page, node_id, scale)
    for _ in range(2):  # the DOM widget follows the canvas on the next frame: measure, move, measure again
        page.evaluate("""id => {
            const n = window.app.graph.getNodeById(id), w = n.widgets.find(w => w.canvas?.dataset.higfaChart);
            const c = window.app.canvas, el = c.canvas, box = w.canvas.getBoundingClientRect();
            const page = el.getBoundingClientRect();
            c.ds.offset[0] += (page.left + page.width / 2 - (box.left + box.width / 2)) / c.ds.scale;
            c.ds.offset[1] += (page.top + page.height / 2 - (box.top + box.height / 2)) / c.ds.scale;
            c.setDirty(true, true);
        }""", node_id)
        page.wait_for_timeout(400)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas = page.evaluate_handle("""id => window.app.graph.getNodeById(id).widgets
        .find(w => w.canvas?.dataset.higfaChart).canvas""", node_id)
    canvas.as_element().screenshot(path=str(path))
    return path


def node_ids(page, kind: str) -> list[int]:
    return page.evaluate("k => window.app.graph.nodes.filter(n => n.type === k).map(n => n.id)", kind)


def screenshot(page, path: Path) -> Path:
    """A screenshot of the page. One that times out because the page stopped drawing is retried once after
    waking the page (a repeated viewport size, bring-to-front); a page that still does not draw fails here
    with that said, not as a bare timeout."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(path))
    except PlaywrightTimeout:
        if draws_frames(page, 5_000):
            raise
        page.set_viewport_size(page.viewport_size)
        page.bring_to_front()
        assert draws_frames(page), f"screenshot {path.name}: the page stopped drawing frames (Chromium stalled)"
        page.screenshot(path=str(path))
    return path


# ----------------------------------------------------------------------------- queueing from the page
WATCH_RUNS = """() => {
    if (window.__higfaRuns) return;
    window.__higfaRuns = [];
    const api = window.comfyAPI.api.api;
    for (const type of ["execution_success", "execution_error", "execution_interrupted"])
        api.addEventListener(type, (e) => window.__higfaRuns.push({type, detail: e.detail}));
}"""


def queue_and_wait(page, timeout_s: float = 300) -> dict:
    """Queues the loaded graph as the Run button does (app.queuePrompt) and waits for the run to end.
    Returns {"node_errors": the server's validation answer, "run": the final execution event}."""
    page.evaluate(WATCH_RUNS)
    before = page.evaluate("window.__higfaRuns.length")
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    node_errors = page.evaluate("window.app.lastNodeErrors")
    if node_errors:
        return {"node_errors": node_errors, "run": None}
    # polled on a timer, not on animation frames: the run's end does not depend on the page drawing
    page.wait_for_function(f"window.__higfaRuns.length > {before}", timeout=timeout_s * 1000, polling=250)
    return {"node_errors": node_errors, "run": page.evaluate(f"window.__higfaRuns[{before}]")}
