"""A user sees only the pack's own lines: loading the built-in world (what `make demo` does first) prints no
diffusers/transformers warning, e.g. "Cannot initialize model with low cpu memory usage because `accelerate`
was not found" (once per model) or "The config attributes {'block_out_channels': ...} were passed to
AutoencoderTiny" (issue 27, item 11)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# Loads the shipped world in a fresh interpreter (the warnings are printed once per process) and counts
# WARNING+ records of the diffusers/transformers loggers too (a silenced stream would hide them from stderr).
LOAD = """
import logging
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(f"{record.name}: {record.getMessage()}")
for name in ("diffusers", "transformers"):
    logging.getLogger(name).addHandler(Keep(logging.WARNING))
from higfa.world.models import load_world
models = load_world()
assert models.tiny_decoder is not None, "the shipped world has a tiny decoder: this test loads it"
print("RECORDS", len(records))
for r in records:
    print(r)
"""


def test_loading_the_world_prints_only_our_lines():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    run = subprocess.run([sys.executable, "-c", LOAD], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "RECORDS 0", run.stdout
    # Nothing else either: no warning, no progress bar ("Loading weights"), no "pip install accelerate".
    assert run.stderr.strip() == "", run.stderr


def test_saved_tiny_decoder_config_has_only_init_keys(tmp_path):
    """save_fp16 (make train-world) writes no key AutoencoderTiny's __init__ does not take, so loading the
    folder back warns about nothing; the shipped asset is such a folder."""
    from diffusers import AutoencoderTiny
    from diffusers.utils import logging as dlogging

    from higfa.world.architecture import TINY_DECODER_CONFIG
    from higfa.world.train_common import save_fp16

    torch.manual_seed(0)
    save_fp16(AutoencoderTiny(**TINY_DECODER_CONFIG), tmp_path / "tiny")
    for folder in (tmp_path / "tiny", ROOT / "higfa" / "world" / "assets" / "tiny_decoder"):
        config = json.loads((folder / "config.json").read_text())
        assert "block_out_channels" not in config and "_name_or_path" not in config, folder
        logger = dlogging.get_logger("diffusers.configuration_utils")
        seen = []
        handler = _Collect(seen)
        logger.addHandler(handler)
        try:
            model = AutoencoderTiny.from_pretrained(folder, torch_dtype=torch.float32, low_cpu_mem_usage=False)
        finally:
            logger.removeHandler(handler)
        assert seen == [], seen
        # __init__ registers block_out_channels itself, so pipelines that read it still find it
        assert list(model.config.block_out_channels) == list(config["decoder_block_out_channels"])


class _Collect(logging.Handler):
    """Keeps the messages of WARNING+ records."""

    def __init__(self, seen: list[str]):
        super().__init__(logging.WARNING)
        self.seen = seen

    def emit(self, record):
        self.seen.append(record.getMessage())
