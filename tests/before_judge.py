"""The Guide as it was before the judge, for the bit-identity tests (tests/test_judge.py for the core,
tests/comfyui/test_judge_nodes.py for the ComfyUI guider): tests/data/before_judge holds frozen copies of
higfa/guide.py and trace.py at 963bdc8; they import today's higfa.guidance / higfa.schedule, so both sides
differ only in guide.py and trace.py."""

from __future__ import annotations

import sys
import types
from pathlib import Path

BEFORE = Path(__file__).resolve().parent / "data" / "before_judge"  # higfa/guide.py + trace.py at 963bdc8


def before_judge_guide() -> type:
    """The frozen Guide class (its module and the frozen trace module registered once under higfa._before_judge_*)."""
    mods = {}
    for name in ("trace", "guide"):
        full = f"higfa._before_judge_{name}"
        if full not in sys.modules:
            src = (BEFORE / f"{name}.py").read_text().replace("from .trace import",
                                                               "from higfa._before_judge_trace import")
            mod = types.ModuleType(full)
            mod.__package__, mod.__file__ = "higfa", str(BEFORE / f"{name}.py")
            sys.modules[full] = mod
            exec(compile(src, mod.__file__, "exec"), mod.__dict__)
        mods[name] = sys.modules[full]
    return mods["guide"].Guide


def trace_bytes(trace, **json_kw) -> bytes:
    """The trace JSON with the wall-clock seconds zeroed (the only field two identical runs may differ in)."""
    for s in trace.steps:
        s.seconds = 0.0
    return trace.to_json(**json_kw).encode()
