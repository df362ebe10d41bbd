"""The parts of the speed bench (`python -m benchmarks.speed`): which module measures what, where each writes its
output (outputs/bench/), and the one way a part writes it."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ROOT / "outputs" / "bench"
# part -> its module (benchmarks.speed.<module>) and output file in OUTPUTS (the names of the scripts they were)
PARTS = {"tiny": ("tiny", "core_speed.json"), "sd15": ("sd15", "speed_sd15.json"),
         "torchrun": ("torchrun", "speed_torchrun.json"), "world": ("world_decoder", "speed_world_decoder.json"),
         "gpu": ("gpu", "speed_gpu.json"), "recommended": ("recommended", "speed_recommended.json"),
         "sdxl": ("sdxl", "speed_sdxl.json"), "peer": ("peer", "speed_peer.json")}
# every output `collect` folds in: the parts', and one not run by `make bench` (`python -m
# benchmarks.speed.world_decoder --preset higfa-robust --out outputs/bench/speed_world_decoder_higfa-robust.json`)
OUTPUT_NAMES = {part: output for part, (_, output) in PARTS.items()} | {
    "world_robust": "speed_world_decoder_higfa-robust.json"}
# not by default: gpu (needs CUDA), sdxl (about 1.5 h on 2 shared cores, 12-16 GB), peer (SD-1.5-size pipelines,
# about 25 min, 11 GB)
DEFAULT = ("tiny", "sd15", "recommended", "torchrun", "world")


def write_part(path: Path, result: dict, shown: dict | None = None) -> int:
    """A part's output file (what `collect` reads) and its printout (`shown`, default all of it); exit status 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result if shown is None else shown, indent=1))
    return 0
