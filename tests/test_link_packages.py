"""scripts/link_packages.py: `make test-requirements` gets torch by hard links, not a second 5.5 GB install."""
import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "link_packages.py"


def _run(*args, **kw):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, **kw)


def test_links_a_distribution_and_its_requirements_so_the_other_venv_sees_them_installed(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    out = _run("--into", venv, "pytest", check=True)
    assert "distributions" in out.stdout
    probe = ("import importlib.metadata as md, pluggy, iniconfig; "
             "print(md.version('pytest'), md.version('pluggy'), md.version('iniconfig'), pluggy.__file__)")
    got = subprocess.run([str(venv / "bin" / "python"), "-c", probe], check=True, capture_output=True, text=True)
    versions, where = got.stdout.split()[:3], got.stdout.split()[3]
    assert versions == [md.version("pytest"), md.version("pluggy"), md.version("iniconfig")]  # requirements too
    assert Path(where).is_relative_to(venv)
    import pluggy
    if os.stat(pluggy.__file__).st_dev == os.stat(where).st_dev:  # same file system: a hard link, no copy
        assert os.stat(where).st_ino == os.stat(pluggy.__file__).st_ino
    assert not (venv / "bin" / "pytest").exists()  # console scripts carry this venv's shebang: left out
    again = _run("--into", venv, "pytest", check=True)  # idempotent: files already there are kept
    assert "0 files linked, 0 copied" in again.stdout


def test_errors_name_the_input_and_the_fix(tmp_path):
    out = _run("--into", tmp_path / "nowhere", "pytest")
    assert out.returncode != 0 and "--into" in out.stderr and "python -m venv" in out.stderr
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    out = _run("--into", venv, "no-such-distribution-xyz")
    assert out.returncode != 0 and "no-such-distribution-xyz" in out.stderr and "make setup" in out.stderr


def test_the_makefile_links_torch_before_pip_sees_it():
    text = (REPO / "Makefile").read_text()
    body = text.split("\ntest-requirements:", 1)[1].split("\n\n", 1)[0]
    assert body.index("link_packages.py") < body.index("pip install")
