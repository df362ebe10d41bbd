"""Every import points down: the method (higfa/*.py) above backends/, world/ and jobs/ (testing/ beside
them), each layer importing only the layers above it, and no two modules importing each other, directly
or through others. Imports are read from the source (ast), at module level AND inside functions, so a
lazy import that would break the layering at run time is caught too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "higfa"

# layer -> the layers it must never import (method = higfa/*.py)
FORBIDDEN = {
    "method": {"backends", "world", "jobs", "testing"},
    "backends": {"world", "jobs", "testing"},
    "world": {"jobs"},
    "testing": {"world", "jobs"},
    "jobs": set(),
    "entry": set(),  # higfa/__main__.py: `python -m higfa` runs the CLI (jobs), below everything
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "assets" not in p.parts}


def layer(module: str) -> str:
    if module == "higfa.__main__":
        return "entry"
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in FORBIDDEN else "method"


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The higfa modules `module` imports anywhere in its source: `import a.b`, `from .x import y` (y
    itself when it is a module), and importlib.import_module("higfa....") with a literal name."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def add(name: str) -> None:
        # the longest known module that `name` starts with: `higfa.jobs.plan.item_seed` -> higfa.jobs.plan
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            for alias in node.names:
                full = f"{base_name}.{alias.name}"
                add(full if full in known else base_name)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            add(node.args[0].value)
    found.discard(module)
    return {m for m in found if m.split(".")[0] == "higfa"}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {m: imports_of(m, p, known) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_import_points_down():
    graph = import_graph()
    wrong = sorted(f"{m} ({layer(m)}) imports {t} ({layer(t)})" for m, targets in graph.items() for t in targets
                   if layer(t) in FORBIDDEN[layer(m)])
    assert wrong == [], "imports against the layers (move the definition to the lower floor):\n" + "\n".join(wrong)


def test_no_import_cycles():
    # __init__ modules re-export their package's names: their edges are not cycles of meaning
    graph = {m: {t for t in ts if all_modules()[t].name != "__init__.py"} for m, ts in import_graph().items()}
    assert cycles(graph) == []


def test_the_checker_sees_imports_inside_functions_and_cycles(tmp_path):
    """The parser itself: a function-level relative import counts, and a two-module loop is a cycle."""
    src = tmp_path / "higfa" / "world"
    src.mkdir(parents=True)
    (src / "a.py").write_text("def f():\n    from ..jobs.plan import item_seed\n    from . import b\n")
    known = {"higfa", "higfa.world", "higfa.world.a", "higfa.world.b", "higfa.jobs", "higfa.jobs.plan"}
    found = imports_of("higfa.world.a", src / "a.py", known)
    assert found == {"higfa.jobs.plan", "higfa.world.b"}
    assert layer("higfa.jobs.plan") in FORBIDDEN[layer("higfa.world.a")]
    assert cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_nothing_below_imports_the_benchmarks_or_the_node_pack():
    """benchmarks/ sits above everything (it imports higfa, never the reverse), and the core never imports the
    ComfyUI pack (nodes/): read from every module of higfa/, nodes/ and scripts/, in functions too."""
    wrong = []
    for folder in ("higfa", "nodes", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                for name in names:
                    top = name.split(".")[0]
                    if top == "benchmarks" or (folder == "higfa" and top == "nodes"):
                        wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert wrong == []


JOBS_WINGS = {  # higfa/jobs/: two wings over a shared floor (docs/architecture.md), joined only at the top
    "floor": {"dataset", "prompts", "model_path", "distributed", "evaluate", "__init__"},
    "augment": {"settings", "plan", "item_sampler", "job", "records", "safety"},
    "guides": {"classifiers", "check_classifier", "tuning", "second_round", "guides", "labelled"},
    # the command list; `higfa augment`'s options and dispatch; `augment --rounds 2` (augment rounds + a trained guide)
    "top": {"cli", "augment", "recipe"},
}


def test_the_jobs_wings_meet_only_on_their_floor():
    """The augment job and the guide-classifier commands each import the floor (dataset IO, prompts, model
    paths, ranks, SaSPA's protocol), never the other wing; the floor imports neither wing; only the top (the
    command list, the multi-round recipe) joins them."""
    wing = {f"higfa.jobs.{m}": name for name, mods in JOBS_WINGS.items() for m in mods}
    wing["higfa.jobs"] = "floor"
    jobs = {m for m in all_modules() if m.startswith("higfa.jobs")}
    assert jobs <= set(wing), f"new jobs modules {sorted(jobs - set(wing))}: put each in a wing (JOBS_WINGS)"
    graph = import_graph()
    wrong = sorted(f"{m} ({wing[m]}) imports {t} ({wing[t]})" for m in jobs for t in graph[m]
                   if t in wing and wing[m] != "top" and wing[t] not in ("floor", wing[m]))
    assert wrong == []
