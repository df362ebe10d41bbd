"""Image datasets on disk, the floor every job stands on: ImageFolder trees (one sub-folder per class) and
CSV/JSON manifests, `read_sources` (the images of a folder or manifest, as every job reads them), robust
image reading (`load_image`, `square_image`) and PNG encoding, the label rules shared by the CLI and the node
pack (a label as a folder name, a label as the class name a prompt says), and the image/manifest writers
(atomic, through higfa.files).
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from ..files import atomic_write_bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class SourceImage:
    path: Path
    label: str  # class name
    id: str  # stable identifier: path relative to the dataset root, '/'-separated


def class_name_from_label(label: str) -> str:
    """What a prompt calls a dataset label: a leading class number and underscores go,
    '001.Black_footed_Albatross' -> 'Black footed Albatross', 'class_0' -> 'class 0'. The one rule for
    `higfa augment`, `higfa tune-classifier` and HiGFA Load Image Folder (`prompts`: {class})."""
    name = re.sub(r"^\d+[._\-\s]+", "", label)
    return " ".join(name.replace("_", " ").split()) or label


def safe_label(label: str) -> str:
    """`label` when it can be one folder name inside an output folder; else ValueError saying why.

    Refused: empty, '.' or '..', a path separator ('/' or '\\'), a control character (NUL included),
    a leading '.' (a hidden folder that ImageFolder readers skip), more than 255 bytes. Refusing (not
    rewriting) keeps two labels from silently sharing a folder."""
    why = None
    if not label.strip():
        why = "it is empty"
    elif label in (".", ".."):
        why = "it names the folder itself or its parent"
    elif "/" in label or "\\" in label:
        why = "it contains a path separator ('/' or '\\')"
    elif any(unicodedata.category(ch) == "Cc" for ch in label):
        why = "it contains a control character"
    elif label.startswith("."):
        why = "it starts with '.' (a hidden folder)"
    elif len(label.encode()) > 255:
        why = "it is longer than 255 bytes"
    if why:
        raise ValueError(f"label {label!r} can't be a folder name: {why}. Use a plain name such as "
                         "'001.Black_footed_Albatross'")
    return label


def scan_image_folder(root: str | Path, keep: Callable[[Path], bool] | None = None
                      ) -> tuple[list[SourceImage], list[str]]:
    """Items of an ImageFolder tree (sorted, deterministic) and the class names (sorted).

    keep(path): called for every class folder, sub-folder and file before it is used; False skips it
    unread (a folder is then not entered). It may raise to stop the walk (e.g. an interrupt)."""
    root = Path(root)
    keep = keep or (lambda _path: True)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}. Pass a folder with one sub-folder per class")
    classes = sorted(d.name for d in root.iterdir() if not d.name.startswith(".") and keep(d) and d.is_dir())
    if not classes:
        raise ValueError(f"dataset folder {root} has no class sub-folders: expected {root}/<class name>/<images>")
    items = []
    for c in classes:
        for f in _walk(root / c, keep):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                items.append(SourceImage(f, c, f.relative_to(root).as_posix()))
    return items, classes


def _walk(folder: Path, keep: Callable[[Path], bool]) -> list[Path]:
    """The files below `folder` that `keep` accepts, sorted by path; symlinked folders are not entered."""
    files = []
    for entry in sorted(folder.iterdir()):
        if not keep(entry):
            continue
        if entry.is_dir():
            if not entry.is_symlink():
                files.extend(_walk(entry, keep))
        elif entry.is_file():
            files.append(entry)
    return sorted(files)


def empty_classes(items: Iterable[SourceImage], classes: Iterable[str]) -> list[str]:
    """The class folders that hold no usable image."""
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
                raise ValueError(f"manifest {path} needs a header with columns 'path' and 'label', got "
                                 f"{reader.fieldnames}")
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
        if r["label"] is None or not str(r["label"]).strip():
            raise ValueError(f"manifest {path}, row {n + 1} ({r['path']}): the label is empty; give every row "
                             "its class label")
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


# ---------------------------------------------------------------------------- images in, images out
class SourceError(Exception):
    """An input image could not be used (missing, unreadable, corrupt)."""


def square_image(path: Path, size: int) -> np.ndarray:
    """Load, resize the short side to `size` and centre-crop: HxWx3 uint8 with H = W = size. Raises
    SourceError naming the file when it is missing, unreadable or corrupt."""
    try:
        rgb = load_image(path)
    except ValueError as e:
        raise SourceError(str(e)) from e
    h, w = rgb.shape[:2]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    y, x = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(rgb[y:y + size, x:x + size])


def encode_png(rgb: np.ndarray) -> bytes:
    """HxWx3 uint8 RGB -> PNG bytes (OpenCV's encoder: `higfa augment`'s outputs are these bytes)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode a PNG")
    return buf.tobytes()


# ---------------------------------------------------------------------------- a dataset's images
def read_sources(data: str | Path, limit: int | None = None) -> tuple[list[SourceImage], list[str], list[str]]:
    """(images sorted by id, labels, empty class folders) of an ImageFolder or a manifest. Every label
    must be usable as an output folder name (`safe_label`): a clear error names the input otherwise."""
    data = Path(data).expanduser()
    if data.is_dir():
        found, classes = scan_image_folder(data)
        empty = empty_classes(found, classes)
    elif data.is_file():
        found = read_manifest(data)
        classes, empty = sorted({i.label for i in found}), []
    else:
        raise FileNotFoundError(f"--data {data} not found: pass an ImageFolder (one sub-folder per class) or a "
                                "CSV/JSON manifest with path,label")
    for it in found:
        try:
            safe_label(it.label)
        except ValueError as e:
            raise ValueError(f"--data {data}, image {it.id}: {e}. The label becomes a folder of --out") from None
    found = sorted({i.id: i for i in found}.values(), key=lambda i: i.id)
    if limit is not None:
        found = found[:limit]
    if not found:
        raise ValueError(f"--data {data} has no images ({', '.join(IMAGE_EXTENSIONS)}): nothing to augment")
    return found, classes, empty
