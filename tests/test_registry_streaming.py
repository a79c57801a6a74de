"""The registry's streaming paths (issue 17, item 2): a staged version written file by file
(`Registry.stage`) keeps publish's guarantees, a refused write is a clean RegistryWriteError (torch's
own writer would abort the process), and a verified load reads the file it checked, by path."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recsys_mtl.registry import TMP_PREFIX, IntegrityError, Registry, RegistryError, RegistryWriteError
from recsys_mtl.streamed_write import sha256_file

NAME = "m"


def _tmp_dirs(reg: Registry) -> list[str]:
    return [p.name for p in (reg.root / NAME).iterdir() if p.name.startswith(TMP_PREFIX)]


def test_a_staged_version_is_invisible_until_committed(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    state = {"w": torch.arange(1000, dtype=torch.float32)}
    with reg.stage(NAME) as staged:
        w = staged.write_stream("weights.pt", lambda f: torch.save(state, f))
        t = staged.write_path("t.pt", lambda p: torch.save(state, p), expected_bytes=4000)
        b = staged.write("extra.bin", b"abc")
        assert reg.versions(NAME) == [] and staged.path.name.startswith(TMP_PREFIX)
        v = staged.commit({"k": 1}, promote=True)
    assert v == "1" and reg.current(NAME) == "1" and _tmp_dirs(reg) == []
    d = reg.version_dir(NAME, v)
    for written, fname in ((w, "weights.pt"), (t, "t.pt"), (b, "extra.bin")):
        blob = (d / fname).read_bytes()
        assert written.bytes == len(blob) and written.sha256 == hashlib.sha256(blob).hexdigest()
    assert torch.equal(torch.load(d / "weights.pt", weights_only=True)["w"], state["w"])
    assert json.loads((d / "manifest.json").read_text())["version"] == "1"


def test_leaving_a_stage_without_commit_leaves_nothing(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    with pytest.raises(ValueError, match="checked and refused"), reg.stage(NAME) as staged:
        staged.write("model.pt", b"x" * 100)
        raise ValueError("checked and refused")
    assert reg.versions(NAME) == [] and _tmp_dirs(reg) == []
    with reg.stage(NAME) as staged:
        for bad in ("manifest.json", "../x", ".hidden"):
            with pytest.raises(RegistryError, match="invalid file name"):
                staged.write(bad, b"")
        staged.write("model.pt", b"")
        with pytest.raises(RegistryWriteError):
            staged.write("model.pt", b"again")  # staged files are never overwritten


_FULL_DISK = """
import resource, signal, sys, torch
from recsys_mtl.registry import Registry, RegistryWriteError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
big = {"w": torch.zeros(1 << 20)}
reg = Registry(sys.argv[1])
for how in ("stream", "path"):
    try:
        with reg.stage("m") as staged:
            if how == "stream":
                staged.write_stream("weights.pt", lambda f: torch.save(big, f))
            else:
                staged.write_path("model.pt", lambda p: torch.save(big, p), expected_bytes=4 << 20)
    except RegistryWriteError as e:
        print(how, e.errno, "nothing was published" in str(e))
"""


def test_a_full_disk_is_a_clean_error_not_an_abort(tmp_path: Path) -> None:
    """torch's archive writer aborts the process when a write to a path fails; through the
    registry a refused write is a RegistryWriteError and nothing stays behind."""
    r = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path / "reg")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split("\n")[:2] == ["stream 27 True", "path 27 True"]  # EFBIG
    assert not list((tmp_path / "reg" / NAME).iterdir())


def _published(tmp_path: Path, blob: bytes) -> tuple[Registry, dict[str, object]]:
    reg = Registry(tmp_path / "reg")
    entry = {"file": "model.pt", "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    reg.publish(NAME, {"model.pt": blob}, {"artifact": entry})
    return reg, entry


def test_verified_path_reads_the_file_it_checked(tmp_path: Path) -> None:
    blob = os.urandom(3 << 20)
    reg, entry = _published(tmp_path, blob)
    p = reg.version_dir(NAME, "1") / "model.pt"
    with reg.verified_path(NAME, "1", entry) as path:
        # a file renamed onto the name after the check changes nothing: the open file is loaded
        other = p.with_name("other")
        other.write_bytes(b"swapped in")
        os.replace(other, p)
        assert Path(path).read_bytes() == blob
    # a write in place while it loads is refused
    p.write_bytes(blob)
    with (
        pytest.raises(IntegrityError, match="changed while it was loaded"),
        reg.verified_path(NAME, "1", entry),
        open(p, "r+b") as f,
    ):
        f.write(bytes([blob[0] ^ 1]))  # one byte, same size
    with pytest.raises(IntegrityError, match="sha256 mismatch"), reg.verified_path(NAME, "1", entry):
        pass
    assert sha256_file(p).bytes == len(blob)


def test_the_loader_loads_from_the_path_not_from_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.jit.load gets a path (torch reads it record by record), never a BytesIO of the file."""
    from recsys_mtl.loader import load_artifact

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), buf)
    reg, entry = _published(tmp_path, buf.getvalue())
    seen: list[object] = []
    real = torch.jit.load

    def spy(f: object, *args: object, **kwargs: object) -> object:
        seen.append(f)
        return real(f, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.jit, "load", spy)
    art = load_artifact(reg, NAME, "1", {**entry, "format": "torchscript"})
    assert len(seen) == 1 and isinstance(seen[0], str)
    assert art.forward is not None
