"""What keeps a dataset job's output folder honest: the content fingerprint of its model files, one
writer per shard (a lock), and the folder checks made before anything is loaded or written.

- `content_fingerprint`: a digest per model/classifier file (safetensors header + content), so a file
  edited in place is noticed on the next run. Files up to `FULL_HASH_BYTES` (8 GiB) are hashed whole, once:
  digests are cached by (size, mtime, ctime, inode) in the run's run.json, so a rerun rehashes only changed files (the
  first hash reads the file once more, as loading it does). Larger files: their header, size and
  `SAMPLES` evenly spaced 1 MiB blocks (an edit between blocks that keeps size and header escapes).
- `ShardLock`: an exclusive `flock` on OUT/.lock-rank-R-of-W holding {pid, host, started}; the kernel drops
  the lock when its holder dies (SIGKILL included), so a stale lock file is simply taken over.
- `check_folders`: --out must not be inside --data (the next scan would read the outputs back as
  inputs) nor --data inside --out, and --out must be writable.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import struct
import tempfile
import time
from pathlib import Path
from typing import Iterable

FULL_HASH_BYTES = 8 << 30  # SD 1.x/2.x/XL checkpoints are hashed whole: an edit anywhere is seen
SAMPLES, BLOCK = 64, 1 << 20


# ---------------------------------------------------------------------------- content fingerprints
def file_digest(path: Path) -> str:
    """A content digest of one file: blake2b of its safetensors header (when it has one) and of its
    bytes (whole up to FULL_HASH_BYTES; else size + SAMPLES evenly spaced blocks + the last block)."""
    h = hashlib.blake2b(digest_size=16)
    size = path.stat().st_size
    with path.open("rb") as f:
        if path.suffix == ".safetensors" and size >= 8:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= min(size - 8, 100 << 20):  # a header that fits; a corrupt one is hashed as content
                h.update(b"header" + f.read(n))
            f.seek(0)
        if size <= FULL_HASH_BYTES:
            h.update(b"full")
            for block in iter(lambda: f.read(BLOCK), b""):
                h.update(block)
        else:
            h.update(b"sampled%d" % size)
            for k in range(SAMPLES + 1):
                f.seek(min(size - BLOCK, k * (size - BLOCK) // SAMPLES))
                h.update(f.read(BLOCK))
    return h.hexdigest()


def model_files(paths: Iterable[str | Path | None]) -> list[Path]:
    """The files that decide a model's outputs: each given file, every non-hidden file below each given
    folder, and a classifier's .json sidecar. Resolved, sorted, without duplicates."""
    found: set[Path] = set()
    for p in paths:
        if p is None:
            continue
        p = Path(p).expanduser().resolve()
        if p.is_dir():
            found.update(f for f in p.rglob("*") if f.is_file()
                         and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            found.add(p)
            if p.with_suffix(".json").is_file():
                found.add(p.with_suffix(".json"))
    return sorted(found)


def content_fingerprint(files: Iterable[Path], cache: dict[str, list] | None = None
                        ) -> tuple[dict[str, str], dict[str, list]]:
    """({path: digest}, the new cache {path: [size, mtime_ns, ctime_ns, inode, digest]}). A cached digest is
    reused while the file's size, mtime, change time and inode are all unchanged: an edit in place that keeps
    the size and puts the mtime back still moves the change time (which no user call can set), and a file
    replaced by another gets a new inode. A cache of an older layout is simply recomputed."""
    cache = cache or {}
    digests, new_cache = {}, {}
    for f in files:
        st = f.stat()
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        old = cache.get(str(f))
        digest = old[4] if isinstance(old, list) and len(old) == 5 and old[:4] == key else file_digest(f)
        digests[str(f)] = digest
        new_cache[str(f)] = [*key, digest]
    return digests, new_cache


def changed_files(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """Files whose content differs (or that appeared or went) between two content fingerprints."""
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


# ---------------------------------------------------------------------------- one writer per shard
class LockedError(ValueError):
    """Another live process holds the shard."""


class ShardLock:
    """Exclusive lock of one shard of an output folder. `acquire` raises LockedError naming the holder."""

    def __init__(self, out: Path, rank: int, world: int):
        self.path = Path(out) / f".lock-rank-{rank:05d}-of-{world:05d}"
        self.shard = f"shard {rank}/{world}" if world > 1 else "the run"
        self._fd: int | None = None
        self.took_over: dict | None = None  # the holder of a stale lock file this lock replaced
        self.unsupported = False  # the file system has no flock (some network mounts): not exclusive

    def acquire(self) -> "ShardLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP):  # a file system without locks: run unguarded
                    self.unsupported = True
                    break
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                holder = self._holder()
                who = (f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started')})"
                       if holder else "another process")
                raise LockedError(f"{self.shard} of {self.path.parent} is being written by {who}: wait for it to "
                                  "finish, stop it, or use another --out") from None
            # The file may have been removed by its last holder between our open and our lock: retry.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.took_over = self._holder() or None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: a waiter then retries on a fresh file
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "ShardLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------------- folders
def inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or below it (both resolved, symlinks followed)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or path.is_relative_to(folder)


def check_folders(data: Path, out: Path) -> None:
    """Refuse an --out inside an ImageFolder --data and a --data (folder or manifest) inside --out; refuse
    an --out that is not a writable folder. Nothing is created. (A manifest's images: `check_inputs`.)"""
    if data.is_dir() and inside(out, data):
        raise ValueError(f"--out {out} is inside --data {data}: the next scan would read the generated images "
                         "back as inputs (mislabelled). Choose an --out outside the dataset")
    if inside(data, out):
        raise ValueError(f"--data {data} is inside --out {out}: choose an --out that does not contain the dataset")
    check_writable(out, "--out")


def check_writable(path: Path, option: str) -> None:
    """`path` is a writable folder, or can be created as one (its nearest existing parent is writable)."""
    p = path.expanduser().absolute()
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if not p.is_dir():
        raise ValueError(f"{option} {path}: {p} is not a folder. Choose a folder path")
    try:  # os.access alone says yes to root on a read-only file system
        if not os.access(p, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied")
        tempfile.TemporaryFile(dir=p).close()
    except OSError as e:
        raise ValueError(f"{option} {path}: {p} is not writable ({e.strerror}). Choose a folder you can write "
                         "to") from None


def check_inputs(paths: Iterable[Path], out: Path) -> None:
    """Refuse input images that lie inside --out (a manifest listing generated images)."""
    for p in paths:
        if inside(p, out):
            raise ValueError(f"input image {p} is inside --out {out}: a run must not read its own outputs. Choose "
                             "another --out or remove the row from the manifest")
