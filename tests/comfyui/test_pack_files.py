"""Static checks of the node pack's files (ComfyUI itself is not imported)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

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


COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "nodes",
                   "node_helpers", "latent_preview", "execution"}  # ComfyUI's own top-level modules


def _module_files(path, node) -> list:
    """The repository files a relative (or `higfa.`) import in `path` refers to."""
    if node.level:
        base = path.parent
        for _ in range(node.level - 1):
            base = base.parent
    elif (node.module or "").split(".")[0] == "higfa":
        base = ROOT
    else:
        return []
    target = base.joinpath(*(node.module or "").split(".")) if node.module else base
    names = [target.with_suffix(".py"), target / "__init__.py", *(target / f"{a.name}.py" for a in node.names)]
    return [f for f in names if f.is_file()]


def runtime_imports() -> dict[str, set]:
    """Top-level third-party modules imported anywhere (functions included) by nodes/ and, transitively, by
    the core modules they import -> the files importing each."""
    todo, seen, found = [ROOT / "__init__.py", *NODES], set(), {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("higfa")):
                todo += _module_files(path, node)
                continue
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top not in sys.stdlib_module_names and top not in COMFYUI_MODULES and top != "__future__":
                    found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


def _names(requirements: str) -> set[str]:
    return {re.split(r"[<>=~!; \[]", ln.strip())[0].lower().replace("_", "-") for ln in requirements.splitlines()
            if ln.strip() and not ln.strip().startswith("#")}


def test_requirements_cover_every_runtime_import_of_the_nodes(comfyui_path):
    """A user's `pip install -r requirements.txt` into ComfyUI's environment must be enough: every module the
    nodes and the core code they use import is declared here or in ComfyUI's own requirements.txt."""
    declared = _names((ROOT / "requirements.txt").read_text()) | _names((comfyui_path / "requirements.txt").read_text())
    dists = importlib.metadata.packages_distributions()
    imports = runtime_imports()
    assert {"diffusers", "transformers", "timm", "cv2"} <= set(imports)  # the check sees lazy imports too
    missing = {top: sorted(where) for top, where in imports.items()
               if not {d.lower().replace("_", "-") for d in dists.get(top, [top])} & declared}
    assert missing == {}, f"add these to requirements.txt (module: importing files): {missing}"
