"""Test helpers shared by the ComfyUI tests (importable: conftest puts this folder on sys.path)."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
TESTPACK = Path(__file__).resolve().parent / "testpack"
WORKFLOWS = ROOT / "workflows"  # the shipped UI workflows (ComfyUI lists them as the pack's templates)
SHIPPED = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
CLASSES = ["class_0", "class_1", "class_2", "class_3"]
CLASSIFIER_FILE = "fgvc_classifier.safetensors"  # the name the shipped workflows use
IMAGE = 64  # pixels; latent 8x8


def load_script(name: str):
    """scripts/<name>.py as a module (scripts/ is not a package)."""
    key = f"higfa_scripts_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def shipped_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def model_family(file_name: str) -> str | None:
    """The family ("sdxl", "sd3") whose shipped workflow names this checkpoint / ControlNet file
    (scripts/workflow_specs.FAMILIES), None for the SD 1.5 files. The test converters swap those loaders for
    the test pack's family loaders (tests/comfyui/testpack/families.py)."""
    for name, f in load_script("workflow_specs").FAMILIES.items():
        if file_name in (f["ckpt"]["name"], f["canny"]["name"]):
            return name
    return None


# ----------------------------------------------------------------------------- test data
def make_classifier(path: Path, confident_class: int = 0):
    """A tiny timm classifier whose head favours `confident_class` (p ≈ 0.98 on most images), so
    traces show gating for that target and full guidance for the others."""
    from higfa.classifier import build_classifier, save_classifier

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clf = build_classifier("test_resnet", CLASSES, IMAGE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    with torch.no_grad():
        clf.model.fc.weight.mul_(0.05)
        clf.model.fc.bias.zero_()
        clf.model.fc.bias[confident_class] = 5.0
    return save_classifier(clf.eval(), path)


def make_image(seed: int, size: int = IMAGE) -> np.ndarray:
    """A few filled shapes on a gradient: edges for Canny, colours for the classifier."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = np.linspace(40, 200, size, dtype=np.uint8)[None, :, None]
    for _ in range(3):
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        center = tuple(int(c) for c in rng.integers(8, size - 8, 2))
        cv2.circle(img, center, int(rng.integers(5, size // 3)), color, -1)
    cv2.rectangle(img, (size // 4, size // 4), (size // 2, size - 10), (250, 250, 250), 2)
    return img


def populate_base(base: Path) -> None:
    from higfa.jobs.dataset import save_image

    make_classifier(base / "models" / "classifiers" / CLASSIFIER_FILE)
    specs = load_script("workflow_specs")
    for model in (specs.CKPT, specs.CANNY, *(f[k] for f in specs.FAMILIES.values() for k in ("ckpt", "canny"))):
        # Stand-ins under the shipped workflows' model names: newer front ends (1.49.6) draw a loader red when
        # its file is missing on the server. Never loaded: tests swap in the test pack's tiny loaders.
        (base / "models" / model["directory"] / model["name"]).write_bytes(b"")
    save_image(base / "input" / "higfa_example.png", make_image(0))
    for i, name in enumerate(CLASSES):
        save_image(base / "input" / "dataset" / name / f"img_{i}.png", make_image(10 + i))



def world_folder() -> Path:
    """The built-in world shipped in higfa/world/assets, checked complete (a clear failure if not)."""
    from higfa.world.birds import model_path
    from higfa.world.models import missing_parts

    path = model_path()
    missing = missing_parts(path)
    assert not missing, f"the built-in world in {path} lacks {missing}: restore it from git or `make train-world`"
    return path


# ----------------------------------------------------------------------------- the server
class Server:
    def __init__(self, url: str, base: Path, log: Path):
        self.url, self.base, self.log = url, base, log
        self._info = None
        self._seed = 1000

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.load(r)

    @property
    def object_info(self) -> dict:
        if self._info is None:
            self._info = self.get("/object_info")
        return self._info

    def next_seed(self) -> int:
        """Identical prompts are answered from ComfyUI's cache with empty outputs: vary the seed."""
        self._seed += 1
        return self._seed

    def post(self, prompt: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def run(self, prompt: dict, timeout: float = 300.0) -> dict:
        """Post, wait until done, return the /history entry (status + outputs)."""
        status, body = self.post(prompt)
        assert status == 200, f"prompt refused ({status}): {json.dumps(body)[:3000]}"
        pid = body["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{pid}").get(pid)
            if entry and (entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                return entry
            time.sleep(0.1)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout} s; log tail:\n{self.log.read_text()[-3000:]}")
