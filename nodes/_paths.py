"""Where the pack may read on a shared server: inside one ComfyUI folder (input/ or models/), or a root
the person who runs the server lists in HIGFA_ALLOWED_ROOTS (os.pathsep-separated, read per call).
A widget value can never widen this: paths are resolved (symlinks included) before the check.
"""

from __future__ import annotations

import os
from pathlib import Path

ALLOWED_ROOTS_ENV = "HIGFA_ALLOWED_ROOTS"


def allowed_roots() -> list[Path]:
    """The server-side opt-in roots (resolved); empty unless HIGFA_ALLOWED_ROOTS is set."""
    text = os.environ.get(ALLOWED_ROOTS_ENV, "")
    return [Path(p).expanduser().resolve() for p in text.split(os.pathsep) if p.strip()]


def inside(path: Path, roots: list[Path]) -> bool:
    """True when `path` resolved (symlinks followed) is one of `roots` or below one."""
    real = path.resolve()
    return any(real == r or real.is_relative_to(r) for r in roots)


def confine(text: str, base: Path, what: str, extra: tuple[Path, ...] = ()) -> tuple[Path, list[Path]]:
    """(resolved path, the roots it may use) for a widget value: relative to `base`, or absolute inside
    `base`, `extra` or HIGFA_ALLOWED_ROOTS. Raises ValueError naming the input and the fix otherwise."""
    if "\x00" in text:  # no path holds one; the OS call would say only "embedded null byte"
        raise ValueError(f"{what} {text!r} contains a NUL character (\\x00), which no file or folder name can hold: "
                         "retype the name")
    base = Path(base).resolve()
    roots = [base, *(Path(e).resolve() for e in extra), *allowed_roots()]
    path = Path(text.strip())
    real = (path if path.is_absolute() else base / path).resolve()
    if not inside(real, roots):
        raise ValueError(f"{what} {text!r} is outside {base}: put it there (and use a relative path), or have "
                         f"the server's owner list its folder in the {ALLOWED_ROOTS_ENV} environment variable")
    return real, roots
