"""`make bench`: what HiGFA costs in time and memory -> benchmarks/results/speed.json and docs/speed.md.

    python -m benchmarks.speed                       # the default parts (about 20 min on 2 idle cores)
    python -m benchmarks.speed --only sd15 torchrun  # some parts; the others keep their last results
    python -m benchmarks.speed --collect             # only rebuild speed.json + docs/speed.md from outputs/bench/

Parts (each is its own module, runnable alone as `python -m benchmarks.speed.<part>`; they write
outputs/bench/<output>.json, `parts.PARTS`):
  tiny           whole runs on the tiny stand-ins, HiGFA vs plain, interleaved
  sd15           SD-1.5-size step costs on the CPU (random-init real-size models)
  recommended    SD-1.5 size: the recommended configuration (higfa-judged, a judge, TAESD) vs plain
  torchrun       `higfa augment` with torchrun x2 vs one process, built-in world
  world_decoder  the world's tiny guidance decoder vs its VAE (fidelity, time)
  gpu            (`make bench-gpu`) the SD-1.5 runs on CUDA fp16; not in the default set
  sdxl           SDXL-size step costs at 1024 px on the CPU; not in the default set (about 1.5 h, 12-16 GB)
  peer           `higfa augment` vs diffusers' pipelines at SD-1.5 size; not in the default set (about 25 min)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from .parts import DEFAULT, OUTPUT_NAMES, OUTPUTS, PARTS, ROOT
from .report import NOTES_MARKER, OLD_NOTES_MARKERS, collect, report

RESULTS = ROOT / "benchmarks" / "results" / "speed.json"
DOC = ROOT / "docs" / "speed.md"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(PARTS), help="run only these parts")
    p.add_argument("--collect", action="store_true", help="run nothing; rebuild from outputs/bench/")
    args = p.parse_args(argv)
    if not args.collect:
        for part in args.only or DEFAULT:
            if part == "world" and not (ROOT / "higfa" / "world" / "assets" / "tiny_decoder").is_dir():
                print("== world: skipped, no tiny decoder shipped (python -m higfa.world.train --stages tiny_decoder)")
                continue
            t0 = time.perf_counter()
            module = f"benchmarks.speed.{PARTS[part][0]}"
            print(f"== {part}: python -m {module}", flush=True)
            cmd = [sys.executable, "-m", module, "--out", str(OUTPUTS / OUTPUT_NAMES[part])]
            subprocess.run(cmd, check=True, cwd=ROOT)
            print(f"== {part} done in {time.perf_counter() - t0:.0f} s", flush=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    result = collect(previous)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    old = DOC.read_text() if DOC.is_file() else ""
    marker = next((m for m in (NOTES_MARKER, *OLD_NOTES_MARKERS) if m in old), None)
    notes = old.split(marker, 1)[1] if marker else ""
    DOC.write_text(report(result) + "\n" + NOTES_MARKER + notes)
    print(f"written: {RESULTS.relative_to(ROOT)}, {DOC.relative_to(ROOT)}")
    return 0
