"""benchmarks/quality.py end to end on a tiny budget: tables, cache reuse, the sensitivity sweep."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tables_cache_and_sweep(quality, tmp_path):
    args = ["--shots", "1", "--steps", "4", "--presets", "cfg", "higfa", "--no-downstream", "--threads", "1",
            "--out", str(tmp_path / "out"), "--doc", str(tmp_path / "quality.md"), "--sweep", "classifier_scale=3"]
    (tmp_path / "quality.md").write_text("old table\n" + quality.NOTES_MARKER + "\nmy notes\n")
    assert quality.main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["fidelity"]) == {"real (few-shot set)", "cfg", "higfa", "classifier_scale=3.0"}
    assert results["sweep"] == ["classifier_scale=3.0"]
    assert results["fidelity"]["higfa"]["guided_sample_steps"] > 0
    assert results["fidelity"]["cfg"]["guided_sample_steps"] == 0
    assert results["fidelity"]["higfa"]["n"] == 16  # one source image per species
    doc = (tmp_path / "quality.md").read_text()
    assert "| classifier_scale=3.0 |" in doc and "## Sensitivity" in doc and "old table" not in doc
    assert doc.rstrip().endswith("my notes")  # hand-written notes below the marker survive a rewrite

    # a rerun reuses every cached generation; a changed override regenerates only what it changes
    cached = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.npz")}
    assert set(cached) == {"cfg.npz", "higfa.npz", "sweep-classifier_scale-3.0.npz"}
    assert quality.main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.npz")} == cached
    assert quality.main(args[:-1] + ["classifier_scale=5"]) == 0
    assert (tmp_path / "out" / "cfg.npz").stat().st_mtime_ns == cached["cfg.npz"]
    assert (tmp_path / "out" / "sweep-classifier_scale-5.0.npz").is_file()
    # --doc '' writes no report, --sweep with no value runs no sweep
    (tmp_path / "quality.md").unlink()
    assert quality.main(args[:-2] + ["--sweep", "--doc", ""]) == 0
    assert not (tmp_path / "quality.md").exists()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["sweep"] == []


def test_bad_overrides_name_the_option(quality):
    with pytest.raises(ValueError, match="--sweep 'classifier_scale'"):
        quality._sweeps(["classifier_scale"])
    with pytest.raises(ValueError, match="--set 'no_such_field=1'"):
        quality._overrides(["no_such_field=1"])
