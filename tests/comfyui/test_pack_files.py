"""Static checks of the node pack's files (no ComfyUI needed)."""

from __future__ import annotations

import ast
import re

import pytest

from comfy_helpers import ROOT

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")

NODES = sorted((ROOT / "nodes").glob("*.py"))


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or "")


def test_root_init_exports_only_the_v3_entry_point():
    tree = ast.parse((ROOT / "__init__.py").read_text())
    names = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert "NODE_CLASS_MAPPINGS" not in names  # it would make ComfyUI silently ignore comfy_entrypoint
    assert "WEB_DIRECTORY" in names and "from .nodes import comfy_entrypoint" in (ROOT / "__init__.py").read_text()


def test_core_never_imports_comfyui():
    for path in (ROOT / "higfa").rglob("*.py"):
        assert not re.search(r"^\s*(import|from) comfy", path.read_text(), re.M), path


def test_nodes_are_thin_adapters():
    """Only _comfy.py imports the node API; the core is imported relatively (users do not pip
    install it); no node does gradient or guidance math itself."""
    for path in NODES:
        mods = list(_imports(path))
        if path.name != "_comfy.py":
            assert not any(m.startswith("comfy_api") for m in mods), path
        assert not any(m.startswith("higfa") for m in mods), f"{path}: import the core relatively (..higfa)"
        assert "..higfa.guidance" not in mods, path
        text = path.read_text()
        assert not re.search(r"torch\.autograd|\.backward\(|log_softmax|cfg_combine", text), path


def test_requirements_match_pyproject_and_leave_torch_alone():
    reqs = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(reqs) <= set(deps)
    assert not [r for r in reqs if re.match(r"(torch|torchvision|torchaudio)\b", r)]
    assert all("==" not in r for r in reqs)


def test_web_folder_is_registered_once():
    """WEB_DIRECTORY registers web/ under the pack's folder name; [tool.comfy] web would register it a
    second time under the project name, and the front end would load every extension twice."""
    assert "web" not in tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("comfy", {})
