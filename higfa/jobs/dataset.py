"""Image datasets on disk: ImageFolder trees (one sub-folder per class) and CSV/JSON manifests,
robust image reading, and atomic writes (temp file + rename) so a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class SourceImage:
    path: Path
    label: str  # class name
    id: str  # stable identifier: path relative to the dataset root, '/'-separated


def scan_image_folder(root: str | Path, keep: Callable[[Path], bool] | None = None
                      ) -> tuple[list[SourceImage], list[str]]:
    """Items of an ImageFolder tree (sorted, deterministic) and the class names (sorted). `keep(path)` is
    asked about every class folder and every entry while walking (symlinked sub-folders are not entered):
    False leaves it out, an exception stops the scan (the ComfyUI node confines and interrupts this way)."""
    root = Path(root)
    keep = keep or (lambda _path: True)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}. Pass a folder with one sub-folder per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and keep(d))
    if not classes:
        raise ValueError(f"dataset folder {root} has no class sub-folders: expected {root}/<class name>/<images>")
    items = []
    for c in classes:
        for f in sorted(f for f in (root / c).rglob("*") if keep(f)):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                items.append(SourceImage(f, c, f.relative_to(root).as_posix()))
    return items, classes


def empty_classes(root: str | Path, items: Iterable[SourceImage], classes: Iterable[str]) -> list[str]:
    have = {i.label for i in items}
    return [c for c in classes if c not in have]


def read_manifest(path: str | Path) -> list[SourceImage]:
    """CSV with columns path,label (header required) or JSON/JSONL of {"path", "label"} objects.
    Relative paths are relative to the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    base = path.parent
    rows: list[dict] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise ValueError(f"manifest {path} needs a header with columns 'path' and 'label', got {reader.fieldnames}")
            rows = list(reader)
    elif path.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        rows = data if isinstance(data, list) else data.get("items", [])
    else:
        raise ValueError(f"manifest {path}: use a .csv (path,label), .json or .jsonl file")
    items = []
    for n, r in enumerate(rows):
        if "path" not in r or "label" not in r:
            raise ValueError(f"manifest {path}, row {n + 1}: needs 'path' and 'label', got {sorted(r)}")
        p = Path(r["path"])
        p = p if p.is_absolute() else base / p
        items.append(SourceImage(p, str(r["label"]), Path(r["path"]).as_posix()))
    return items


def load_image(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB. Gray and alpha images are converted (alpha composited over black).
    Raises ValueError naming the file when it is missing, unreadable or corrupt."""
    path = Path(path)
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    if data is None:
        raise ValueError(f"image not found: {path}")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError(f"image {path} is unreadable or corrupt: re-export it or remove it from the dataset")
    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(1, int(np.iinfo(img.dtype).max))) \
            if np.issubdtype(img.dtype, np.integer) else np.clip(img * 255, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
        a = rgb[:, :, 3:4].astype(np.float32) / 255.0
        return np.round(rgb[:, :, :3] * a).astype(np.uint8)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def safe_label(label: str) -> str:
    """A class label used as one folder name, unchanged, or a ValueError naming it: no path separators,
    no '.'/'..', not empty, no NUL (so a label can never lead outside the dataset folder)."""
    text = str(label)
    if not text.strip() or text in (".", "..") or "/" in text or "\\" in text or "\0" in text:
        raise ValueError(f"class label {label!r} cannot be a folder name: use a plain name without '/', '\\', "
                         f"'.' or '..'")
    return text


def file_mode() -> int:
    """0o666 less the process umask: the mode open() would give a new file (0o644 with umask 022)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: read the umask by setting it back at once
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder + rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; outputs are shared like any file open() makes
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_image(path: str | Path, rgb: np.ndarray) -> None:
    """Atomically save an HxWx3 uint8 RGB image; the format follows the suffix (.png default)."""
    ext = Path(path).suffix.lower() or ".png"
    ok, buf = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode image for {path}")
    atomic_write_bytes(path, buf.tobytes())


def append_manifest(path: str | Path, rows: Iterable[dict]) -> None:
    """Add rows ({"path", "label", ...}) to a CSV manifest that `read_manifest` reads, creating it if
    needed. Paths should be relative to the manifest's folder. The file is rewritten atomically, so
    a crash leaves the old manifest or the new one, never a torn row."""
    path = Path(path)
    old: list[dict] = []
    fields = ["path", "label"]
    if path.is_file():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields += [c for c in reader.fieldnames or [] if c not in fields]
            old = list(reader)
    rows = [dict(r) for r in rows]
    for n, r in enumerate(rows):
        if "path" not in r or "label" not in r:
            raise ValueError(f"manifest row {n + 1} for {path}: needs 'path' and 'label', got {sorted(r)}")
        fields += [c for c in r if c not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(old + rows)
    atomic_write_bytes(path, buf.getvalue().encode())
