"""The registry's own guarantees, on a real directory with real processes: promotion as a
compare-and-swap under the promote lock, rollbacks recorded (and refused to automatic promotes),
crafted pointers refused, checksummed reads, and temporary directories of dead exporters removed
at once while a live exporter's stay. No torch: these run in a second or two."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from recsys_mtl.registry import (
    CURRENT_FILE,
    ROLLBACKS_FILE,
    TMP_PREFIX,
    IntegrityError,
    PromoteConflict,
    Registry,
    RegistryError,
    RolledBackError,
)
from tests.conftest import cli

NAME = "m"


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    """Versions 1, 2, 3; 1 promoted, then 2."""
    r = Registry(tmp_path / "registry")
    for i in range(3):
        r.publish(NAME, {"model.pt": f"model {i + 1}".encode()}, {"who": i + 1})
    r.promote(NAME, "1")
    r.promote(NAME, "2")
    return r


def _entries(reg: Registry) -> list[str]:
    return sorted(p.name for p in (reg.root / NAME).iterdir())


# ---- compare-and-swap ----------------------------------------------------------------------------


def test_promote_is_a_compare_and_swap(reg: Registry) -> None:
    with pytest.raises(PromoteConflict, match="current is v2, not v1") as e:
        reg.promote(NAME, "3", expect="1")
    assert (e.value.expected, e.value.actual) == ("1", "2") and reg.current(NAME) == "2"
    assert reg.promote(NAME, "3", expect="2") == "2" and reg.current(NAME) == "3"
    # None expects "nothing promoted yet"
    reg.publish("fresh", {"model.pt": b"x"}, {})
    with pytest.raises(PromoteConflict):
        reg.promote(NAME, "1", expect=None)
    assert reg.promote("fresh", "1", expect=None) is None and reg.current("fresh") == "1"


def test_publish_and_promote_conflict_publishes_nothing(reg: Registry) -> None:
    before = _entries(reg)
    cur = (reg.root / NAME / CURRENT_FILE).read_bytes()
    with pytest.raises(PromoteConflict):
        reg.publish(NAME, {"model.pt": b"new"}, {}, promote=True, expect="1")
    assert _entries(reg) == before and reg.versions(NAME) == ["1", "2", "3"]  # no version, no temp dir
    assert (reg.root / NAME / CURRENT_FILE).read_bytes() == cur
    assert reg.publish(NAME, {"model.pt": b"new"}, {}, promote=True, expect="2") == "4"
    assert reg.current(NAME) == "4"


def test_concurrent_compare_and_swaps_have_one_winner(reg: Registry) -> None:
    """Eight promoters that all read v2 as current: exactly one switches it (the promote lock
    serialises them; each later one finds its expectation stale)."""
    for _ in range(8):
        reg.publish(NAME, {"model.pt": b"candidate"}, {})
    won: list[str] = []
    lost: list[str] = []
    start = threading.Barrier(8)

    def promoter(v: str) -> None:
        start.wait()
        try:
            reg.promote(NAME, v, expect="2")
            won.append(v)
        except PromoteConflict:
            lost.append(v)

    threads = [threading.Thread(target=promoter, args=(str(v),)) for v in range(4, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7 and reg.current(NAME) == won[0]


# ---- rollbacks -----------------------------------------------------------------------------------


def test_rollback_is_recorded_and_refused_to_automatic_promotes(reg: Registry) -> None:
    reg.promote(NAME, "3")
    assert reg.rollback(NAME) == ("3", "2")  # the version current before it
    assert reg.current(NAME) == "2" and set(reg.rolled_back(NAME)) == {"3"}
    assert reg.rolled_back(NAME)["3"]["to"] == "2"
    with pytest.raises(RolledBackError, match="v3 was rolled back"):
        reg.promote(NAME, "3", unless_rolled_back=True)
    assert reg.current(NAME) == "2"
    # again: 3 is skipped (rolled back), 1 is next
    assert reg.rollback(NAME) == ("2", "1") and set(reg.rolled_back(NAME)) == {"2", "3"}
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback(NAME)
    # a person promoting a rolled-back version on purpose puts it back in service
    reg.promote(NAME, "3")
    assert set(reg.rolled_back(NAME)) == {"2"} and reg.current(NAME) == "3"
    assert reg.rollback(NAME, to="1") == ("3", "1") and set(reg.rolled_back(NAME)) == {"2", "3"}


def test_promote_to_an_older_version_counts_as_a_rollback(reg: Registry) -> None:
    """The plain `Registry(...).promote(name, older)` one-liner records the version it replaces."""
    reg.promote(NAME, "3")
    reg.promote(NAME, "1")
    assert reg.rolled_back(NAME)["3"]["by"] == "promote to an older version"
    with pytest.raises(RolledBackError):
        reg.promote(NAME, "3", unless_rolled_back=True)
    reg.promote(NAME, "2")  # forward again: nothing new recorded
    assert set(reg.rolled_back(NAME)) == {"3"}


def test_the_rollback_command(reg: Registry) -> None:
    reg.promote(NAME, "3")
    r = cli("rollback", "--registry", str(reg.root), "--name", NAME)
    assert r.returncode == 0, r.stderr
    assert "current v3 -> v2" in r.stdout and "recorded as rolled back" in r.stdout
    assert reg.current(NAME) == "2" and "3" in json.loads((reg.root / NAME / ROLLBACKS_FILE).read_text())
    r = cli("rollback", "--registry", str(reg.root), "--name", NAME, "--list")
    assert r.returncode == 0 and "current v2" in r.stdout and "rolled back: v3" in r.stdout
    for args, msg in [
        (["--name", "nope"], "no model 'nope'"),
        (["--name", NAME, "--to", "9"], "no version '9'"),
        (["--name", NAME, "--to", "../x"], "invalid version"),
        (["--name", NAME, "--to", "2"], "already current"),
    ]:
        r = cli("rollback", "--registry", str(reg.root), *args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert reg.current(NAME) == "2"


# ---- pointers and checksums ----------------------------------------------------------------------


@pytest.mark.parametrize("pointer", ["../../etc", "../2", ".tmp-x", "current", "", "a/b"])
def test_a_crafted_current_json_is_refused(reg: Registry, pointer: object) -> None:
    (reg.root / NAME / CURRENT_FILE).write_text(json.dumps({"version": pointer}))
    with pytest.raises(RegistryError, match="refusing its pointer: invalid version"):
        reg.resolve(NAME, "current")


def test_read_verified_checks_size_and_sha256(reg: Registry) -> None:
    import hashlib

    blob = (reg.root / NAME / "1" / "model.pt").read_bytes()
    entry = {"file": "model.pt", "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    assert reg.read_verified(NAME, "1", entry) == blob
    (reg.root / NAME / "1" / "model.pt").write_bytes(b"MODEL 1")  # same size, other bytes
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        reg.read_verified(NAME, "1", entry)
    (reg.root / NAME / "1" / "model.pt").write_bytes(blob + b"!")
    with pytest.raises(IntegrityError, match="the manifest says"):
        reg.read_verified(NAME, "1", entry)
    with pytest.raises(RegistryError, match="invalid file name"):
        reg.read_verified(NAME, "1", {**entry, "file": "../2/model.pt"})


# ---- temporary directories of dead and live exporters ---------------------------------------------

# An exporter that writes its first file and then hangs on the second: killed, it is an exporter
# that died mid-write; left alone, one still writing.
_STUCK_EXPORTER = """
import sys, time
from collections.abc import Mapping
from recsys_mtl.registry import Registry

class Files(Mapping):
    def __iter__(self):
        return iter(["model.pt", "weights.pt"])
    def __len__(self):
        return 2
    def __getitem__(self, key):
        if key == "weights.pt":
            print("writing", flush=True)
            time.sleep(600)
        return b"x" * 4096

Registry(sys.argv[1]).publish(sys.argv[2], Files(), {})
"""


def _stuck_exporter(reg: Registry) -> tuple[subprocess.Popen[str], Path]:
    p = subprocess.Popen(
        [sys.executable, "-c", _STUCK_EXPORTER, str(reg.root), NAME],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline() == "writing\n"
    (tmp,) = (reg.root / NAME).glob(f"{TMP_PREFIX}{p.pid}-*")
    assert (tmp / "model.pt").is_file()
    return p, tmp


def test_a_dead_exporters_temp_dir_goes_at_the_next_export_a_live_ones_stays(reg: Registry) -> None:
    dead, dead_tmp = _stuck_exporter(reg)
    live, live_tmp = _stuck_exporter(reg)
    try:
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait(30)
        assert dead_tmp.is_dir()  # what a killed export leaves: seconds old, not an hour
        assert reg.publish(NAME, {"model.pt": b"next"}, {}) == "4"
        assert not dead_tmp.exists() and live_tmp.is_dir()
        assert reg.clean_stale(NAME) == [] and live_tmp.is_dir()  # cleaning again: still live
        assert reg.versions(NAME) == ["1", "2", "3", "4"]
        assert not (reg.root / NAME / "4" / ".lock").exists()  # the lock never enters a version
    finally:
        live.kill()
        live.wait(30)
    assert reg.clean_stale(NAME) == [live_tmp.name]
    assert not [p for p in (reg.root / NAME).iterdir() if p.name.startswith(TMP_PREFIX)]
