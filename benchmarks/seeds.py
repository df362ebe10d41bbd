"""The benches' per-item seeds, in one place: every bench that generates from the built-in world's few-shot sources
(the quality arms, `guidance_options`, the world-decoder speed part) draws an item's contour transform and its
starting noise from (generation seed, stream, source index, variant) alone, so arms are paired: the same item gets
the same contour and noise in every arm and every bench.

These are not `higfa augment`'s seeds (`higfa.seeds.derive_seed`: one seed per item from the source image's id):
the bench's committed results (benchmarks/results/quality.json, guidance_options.json, speed.json's world-decoder
section) and its cached images were generated with these, and switching would change every generated bench image.
The bench moves to derive_seed when those results are regenerated wholesale (issue 24's harder world).
"""

from __future__ import annotations

import numpy as np

CONTOUR, NOISE = 1, 2  # the streams: the contour transform's draw, the starting noise


def bench_seed(seed: int, stream: int, source: int, variant: int) -> int:
    """A 32-bit seed from (seed, stream, source index, variant) only: numpy's SeedSequence of the four."""
    return int(np.random.SeedSequence([seed, stream, source, variant]).generate_state(1, np.uint32)[0])
