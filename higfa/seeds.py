"""The one seed scheme for anything that draws noise for an item (docs/method.md, "Seeds").

An item is (global seed, source id, variant): `derive_seed` hashes exactly these three, so an item's
noise never depends on which other items run, in which order, batch or process. Within an item, streams
are split from its seed: `higfa augment` draws the starting and ancestral noise from
`torch.Generator().manual_seed(s)` and the contour transform from `ContourTransform.sample(h, w, (s, 1))`.

    s = derive_seed(0, "001.Black_footed_Albatross/img_0001.jpg", 1)
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, source: str | int, variant: int) -> int:
    """A 63-bit seed from (global seed, source id, variant) only: the first 8 bytes of
    sha256("higfa-augment|{seed}|{source}|{variant}"), big-endian, top bit cleared. `source` is an image's
    stable id (a path relative to its dataset, or an index written as a number)."""
    digest = hashlib.sha256(f"higfa-augment|{seed}|{source}|{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)
