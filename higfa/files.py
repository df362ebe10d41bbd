"""Writing files so a crash never leaves half of one: every writer in the package (images, manifests,
records, classifier weights and sidecars, training checkpoints) goes through `atomic_write`.

    atomic_write_bytes(path, data)                       # bytes
    atomic_write(path, lambda f: torch.save(state, f))   # anything that writes to a binary file object

and `files_digest`, the one digest of a set of model files (the quality bench keys its caches by it).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call write(f) on a temp file in the same folder, then rename it onto `path`: readers see the old
    file or the new one. The file gets the mode a plain open() would (0666 minus the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open() would honour the umask
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` via a temp file in the same folder + rename: readers see the old file or the new one."""
    atomic_write(path, lambda f: f.write(data))


def current_umask() -> int:
    """The process umask (read by setting it and putting it back; there is no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def files_digest(root: str | Path, paths: Iterable[str | Path]) -> str:
    """sha256 (16 hex) of a set of files under `root`: for each given path in order (a folder: every file
    below it, sorted), its path relative to `root` and its bytes. Whatever changes a weight, a config or a
    file name changes the digest. (`higfa augment`'s run records keep per-file digests instead:
    jobs/safety.py `content_fingerprint`, which can resume from cached ones.)"""
    root = Path(root)
    h = hashlib.sha256()
    for part in map(Path, paths):
        for f in sorted([part] if part.is_file() else part.rglob("*")):
            if f.is_file():
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]
