"""Hard-link installed distributions, with everything they require, from this interpreter's environment into
another venv of the same Python (`make test-requirements`).

Why: torch's CUDA build is about 5.5 GB on disk. `make test-requirements` needs a second venv built only from
ComfyUI's and the pack's requirements, and a second pip install of torch doubled the clone's footprint to 14 GB and
ran CI's disk full (``[Errno 28] No space left on device``). Hard links give that venv the same installed files
(dist-info and RECORD included, so pip sees them as installed) for no extra space; across file systems the files
are copied instead. Files a distribution installs outside site-packages (console scripts with this venv's
interpreter in their shebang) are left out.

Usage: ``.venv/bin/python scripts/link_packages.py --into .cache/venv-requirements torch torchvision``
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from packaging.requirements import Requirement


def closure(names: list[str]) -> list[md.Distribution]:
    """The named distributions and, recursively, every requirement whose marker holds here (no extras)."""
    seen: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"link_packages: {name!r} is not installed in {sys.prefix}; install it there first "
                             f"(make setup)") from None
        seen[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def target_site_packages(venv: Path) -> Path:
    """purelib of the venv at ``venv``, checked to be the same Python version as this one."""
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"link_packages: --into {venv}: no {python}; create the venv first (python -m venv {venv})")
    out = subprocess.run([str(python), "-c", "import sys, sysconfig; print(sys.version_info[:2]); "
                          "print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True)
    version, purelib = out.stdout.splitlines()
    if version != str(sys.version_info[:2]):
        raise SystemExit(f"link_packages: --into {venv} runs Python {version}, this one {sys.version_info[:2]}; "
                         f"installed packages only carry over between the same Python version")
    return Path(purelib)


def link(dists: list[md.Distribution], dest: Path) -> tuple[int, int]:
    """Hard-link (else copy) every file of ``dists`` under this site-packages into ``dest``; existing files are
    kept. Returns (files linked, files copied)."""
    src_root = Path(sysconfig.get_paths()["purelib"]).resolve()
    linked = copied = 0
    for dist in dists:
        for entry in dist.files or []:
            src = Path(dist.locate_file(entry)).resolve()
            if not src.is_file() or not src.is_relative_to(src_root):
                continue  # console scripts in bin/, or RECORD lines for files pip did not keep
            dst = dest / src.relative_to(src_root)
            if dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
                linked += 1
            except OSError:
                shutil.copy2(src, dst)
                copied += 1
    return linked, copied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--into", type=Path, required=True, help="the target venv's directory")
    parser.add_argument("names", nargs="+", help="distributions to carry over with their requirements")
    args = parser.parse_args(argv)
    dest = target_site_packages(args.into)
    dists = closure(args.names)
    linked, copied = link(dists, dest)
    print(f"link_packages: {len(dists)} distributions into {dest}: {linked} files linked, {copied} copied")


if __name__ == "__main__":
    main()
