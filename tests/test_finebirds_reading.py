"""docs/quality.md's finebirds 10-shot reading (the oracle-guided bound and the few-shot-guided arms beside it) quotes
benchmarks/results/reading_finebirds.json, which the quality bench wrote (its per-world layout and converged block),
and the block is what the docs say it is."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reading_finebirds.json"


ARMS = ("higfa-oracle", "higfa-robust", "higfa-robust-ensemble", "higfa-judged-ensemble",
        "higfa-judged-ensemble-filtered")


def _block() -> dict:
    return json.loads(RESULTS.read_text())["worlds"]["finebirds"]["downstream"]["converged"]["resnet18-pre"]["10-shot"]


def test_the_reading_is_the_benches_converged_block_cut_down_as_the_docs_say():
    world = json.loads(RESULTS.read_text())["worlds"]["finebirds"]
    b = _block()
    assert world["settings"]["downstream_steps"] == b["steps"] == 2400 and b["steps_from"] == "--downstream-steps"
    assert world["settings"]["archs"] == ["resnet18-pre"] and world["settings"]["seeds"] == [0, 1]
    assert set(world["presets"]) <= set(ARMS) and set(world["presets"]) == set(world["settings"]["arms"])
    assert "/work/" not in RESULTS.read_text()  # classifier files named as asked (probe:NAME), no machine's folders
    judged = world["presets"].get("higfa-judged-ensemble")
    if judged:  # the paper's mechanism on, its confidence read from a classifier that did not guide
        assert judged["schedule"]["modulate"] and judged["schedule"]["gating"] and judged["gated_sample_steps"] > 0
        assert judged["judge"] == "probe:fewshot_resnet18_pre" not in judged["guided_by"]
        filtered = world["presets"]["higfa-judged-ensemble-filtered"]
        assert filtered["filter"]["classifier"] == filtered["judge"] == judged["judge"]
    assert world["presets"]["higfa-oracle"]["scored_by"] == "scorer"
    for arm in ("real", "real+higfa-oracle"):
        assert b["arms"][arm]["seeds"] == [0, 1]
    assert all(p["plateaued"] for p in b["plateau"].values())
    gain = b["paired"]["real+higfa-oracle - real"]
    assert gain["mean"] >= 0.05 and gain["ci95"][0] > 0  # the acceptance's bar, on this reading


def test_docs_quote_the_reading():
    text = (ROOT / "docs" / "quality.md").read_text()
    b = _block()
    gain = b["paired"]["real+higfa-oracle - real"]
    assert "benchmarks/results/reading_finebirds.json" in text
    assert f"**real + higfa-oracle − real: {gain['mean']:+.3f}**" in text
    assert f"[{gain['ci95'][0]:+.3f}, {gain['ci95'][1]:+.3f}]" in text
    for arm in b["arms"]:
        assert f"| {b['arms'][arm]['mean']:.3f} | " in text, arm
        if arm.startswith("real+"):
            g = b["paired"][f"{arm} - real"]
            assert f"**{g['mean']:+.3f}** [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]" in text, arm
    if b.get("headroom"):
        assert f"**{b['headroom']['fraction']['real+higfa-oracle']:.0%} of that headroom**" in text


def test_readme_quotes_the_reading():
    import re

    b = _block()
    text = re.sub(r"\s+", " ", (ROOT / "README.md").read_text())
    match = re.search(r"reaches ([\d.]+) from 10 real images per species and ([\d.]+) from 40, and images guided "
                      r"by the world oracle \(diagnosis only\) lift it to ([\d.]+) \(([+-][\d.]+), (\d) seeds at "
                      r"(\d+) steps", text)
    assert match, "README no longer quotes the finebirds oracle-guided reading (reword the test with the README)"
    arms = b["arms"]
    assert list(match.groups()) == [f"{arms['real']['mean']:.2f}", f"{arms['real_x4']['mean']:.2f}",
                                    f"{arms['real+higfa-oracle']['mean']:.2f}",
                                    f"{b['paired']['real+higfa-oracle - real']['mean']:+.3f}",
                                    str(len(arms["real"]["seeds"])), str(b["steps"])]
