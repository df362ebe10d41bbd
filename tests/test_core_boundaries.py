"""The core stays framework-free."""

import re
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "higfa"


def test_core_never_imports_comfyui():
    pattern = re.compile(r"^\s*(import|from)\s+comfy", re.M)
    offenders = [p.name for p in CORE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_core_imports_without_comfyui_and_lazily():
    code = ("import sys, higfa; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('comfy', 'comfy_api', 'diffusers', 'timm', 'matplotlib', 'transformers')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=CORE.parent)
    assert out.stdout.strip() == "[]"
