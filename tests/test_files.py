"""higfa.files: atomic writes and the one model-files digest."""

import hashlib

import pytest

from higfa.files import atomic_write, files_digest


def test_files_digest_is_the_path_and_bytes_of_every_file_in_order(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "b.bin").write_bytes(b"BB")
    (tmp_path / "unet" / "a.json").write_bytes(b"{}")
    (tmp_path / "guide.safetensors").write_bytes(b"G")
    got = files_digest(tmp_path, [tmp_path / "unet", tmp_path / "guide.safetensors", tmp_path / "missing"])
    h = hashlib.sha256()  # the bytes the quality bench's cache keys were made of (benchmarks/quality/arms.py)
    for rel, data in (("unet/a.json", b"{}"), ("unet/b.bin", b"BB"), ("guide.safetensors", b"G")):
        h.update(rel.encode())
        h.update(data)
    assert got == h.hexdigest()[:16]
    (tmp_path / "unet" / "b.bin").write_bytes(b"BC")
    assert files_digest(tmp_path, [tmp_path / "unet", tmp_path / "guide.safetensors"]) != got


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_write(path, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
