"""The registry's own guarantees, on a real directory with real processes: promotion as a
compare-and-swap under the promote lock, rollbacks recorded (and refused to automatic promotes),
crafted pointers refused, checksummed reads, and temporary directories of dead exporters removed
at once while a live exporter's stay; version numbering, names and listings, current.json and its
history, leftovers removed by age. No torch: these run in a few seconds."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from recsys_mtl.registry import (
    CURRENT_FILE,
    HISTORY_MAX,
    MANIFEST_FILE,
    ROLLBACKS_FILE,
    STALE_TMP_SECONDS,
    TMP_PREFIX,
    IntegrityError,
    PromoteConflict,
    Registry,
    RegistryError,
    RolledBackError,
    check_name,
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


# ---- names and version numbering ------------------------------------------------------------------


def test_default_versions_are_plain_integers_sorted_numerically(tmp_path: Path) -> None:
    r = Registry(tmp_path / "registry")
    assert r.next_version(NAME) == "1" and r.versions(NAME) == []
    got = [r.publish(NAME, {"model.pt": b"x"}, {}) for _ in range(11)]
    assert got == [str(i) for i in range(1, 12)]  # no zero padding
    assert r.versions(NAME) == got  # "10" and "11" after "9", not after "1"
    assert r.resolve(NAME, "latest") == "11" and r.next_version(NAME) == "12"
    # an explicit version (a date) sorts after the integers and does not move the numbering
    assert r.publish(NAME, {"model.pt": b"x"}, {}, version="2026-01-05") == "2026-01-05"
    assert r.versions(NAME)[-1] == "2026-01-05" and r.resolve(NAME, "latest") == "2026-01-05"
    assert r.publish(NAME, {"model.pt": b"x"}, {}) == "12"


def test_publish_writes_the_files_and_fills_in_name_and_version(tmp_path: Path) -> None:
    r = Registry(tmp_path / "new" / "registry")  # created on first publish
    v = r.publish(NAME, {"model.pt": b"abc", "extra.bin": b""}, {"name": "other", "version": "9", "k": [1]})
    assert v == "1" and r.manifest(NAME, v) == {"name": NAME, "version": "1", "k": [1]}
    d = r.version_dir(NAME, v)
    assert sorted(p.name for p in d.iterdir()) == ["extra.bin", "manifest.json", "model.pt"]
    assert (d / "model.pt").read_bytes() == b"abc" and (d / "extra.bin").read_bytes() == b""
    assert r.current(NAME) is None  # publishing is not promoting
    assert r.publish(NAME, {"model.pt": b"x"}, {}, promote=True) == "2" and r.current(NAME) == "2"


def test_an_explicit_version_must_be_new_and_a_valid_name(tmp_path: Path) -> None:
    r = Registry(tmp_path / "registry")
    r.publish(NAME, {"model.pt": b"first"}, {}, version="2026-01-05")
    with pytest.raises(RegistryError, match="versions are immutable"):
        r.publish(NAME, {"model.pt": b"second"}, {}, version="2026-01-05")
    assert (r.version_dir(NAME, "2026-01-05") / "model.pt").read_bytes() == b"first"
    for bad in ["../x", "a/b", ".x", "-x", "current", "latest", "", "x" * 129]:
        with pytest.raises(RegistryError, match="invalid version"):
            r.publish(NAME, {"model.pt": b"x"}, {}, version=bad)
    for bad in ["../m", "", ".m", "latest"]:
        with pytest.raises(RegistryError, match="invalid model name"):
            r.publish(bad, {"model.pt": b"x"}, {})
    for bad in ["manifest.json", "a/b", "../model.pt", ".hidden", ""]:
        with pytest.raises(RegistryError, match="invalid file name"):
            r.publish(NAME, {bad: b"x"}, {})
    assert r.versions(NAME) == ["2026-01-05"] and r.names() == [NAME]
    assert not [p for p in (r.root / NAME).iterdir() if p.name.startswith(TMP_PREFIX)]


@pytest.mark.parametrize("value", ["a", "A1", "v1.2_3-x", "x" * 128, "2026-01-05", "0"])
def test_check_name_accepts_plain_names(value: str) -> None:
    assert check_name("version", value) == value


@pytest.mark.parametrize(
    "value", ["", "x" * 129, ".a", "_a", "-a", "a/b", "a\\b", "a b", "é", "current", "latest", "..", 3, None]
)
def test_check_name_refuses_everything_else(value: object) -> None:
    with pytest.raises(RegistryError, match="invalid thing"):
        check_name("thing", value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["v1\n", "current\n"])
def test_check_name_refuses_a_trailing_newline(value: str) -> None:
    with pytest.raises(RegistryError):
        check_name("version", value)


def test_names_and_versions_list_only_complete_versions(tmp_path: Path) -> None:
    r = Registry(tmp_path / "registry")
    assert r.names() == []  # no root yet
    r.publish("b", {"model.pt": b"x"}, {})
    r.publish("a", {"model.pt": b"x"}, {})
    (r.root / "empty").mkdir()  # a model directory with no version
    (r.root / "half" / "1").mkdir(parents=True)  # a version directory without its manifest
    (r.root / ".hidden" / "1").mkdir(parents=True)
    (r.root / ".hidden" / "1" / MANIFEST_FILE).write_text("{}")
    (r.root / "stray.txt").write_text("not a model")
    for junk in (f"{TMP_PREFIX}123-abc", "latest", "2"):  # temporary, reserved, incomplete
        (r.root / "a" / junk).mkdir()
    (r.root / "a" / f"{TMP_PREFIX}123-abc" / MANIFEST_FILE).write_text("{}")
    (r.root / "a" / "latest" / MANIFEST_FILE).write_text("{}")
    (r.root / "a" / "2" / "model.pt").write_bytes(b"half-written, no manifest")
    (r.root / "a" / "5").write_text("a file, not a directory")
    assert r.names() == ["a", "b"]
    assert r.versions("a") == ["1"] and r.versions("empty") == [] and r.versions("nope") == []
    with pytest.raises(RegistryError, match=r"no version '2' \(versions: 1\)"):
        r.version_dir("a", "2")
    with pytest.raises(RegistryError, match="no versions at all"):
        r.version_dir("half", "1")
    # the next number is taken by a directory that is no version: publish moves past it, untouched
    assert r.publish("a", {"model.pt": b"x"}, {}) == "3" and r.versions("a") == ["1", "3"]
    assert (r.root / "a" / "2" / "model.pt").read_bytes() == b"half-written, no manifest"


def test_resolve_references(reg: Registry) -> None:
    assert reg.resolve(NAME) == "2" and reg.resolve(NAME, "current") == "2"
    assert (
        reg.resolve(NAME, "latest") == "3" and reg.resolve(NAME, 1) == "1" and reg.resolve(NAME, "1") == "1"
    )
    assert reg.manifest(NAME)["who"] == 2 and reg.manifest(NAME, "latest")["who"] == 3
    with pytest.raises(RegistryError, match=r"no version '9' \(versions: 1, 2, 3\)"):
        reg.resolve(NAME, 9)
    reg.publish("fresh", {"model.pt": b"x"}, {})
    with pytest.raises(RegistryError, match=r"has no current version \(promote one"):
        reg.resolve("fresh")
    with pytest.raises(RegistryError, match="'nope' has no versions"):
        reg.resolve("nope", "latest")


# ---- current.json -----------------------------------------------------------------------------------


def test_current_record_keeps_previous_and_history_newest_first(tmp_path: Path) -> None:
    r = Registry(tmp_path / "registry")
    for _ in range(4):
        r.publish(NAME, {"model.pt": b"x"}, {})
    assert r.current(NAME) is None and r.current_record(NAME) is None
    assert r.promote(NAME, "1") is None
    rec = r.current_record(NAME)
    assert rec is not None and (rec["version"], rec["previous"], rec["history"]) == ("1", None, [])
    assert dt.datetime.fromisoformat(rec["promoted_at"]).tzinfo is not None
    assert r.promote(NAME, "2") == "1" and r.promote(NAME, 4) == "2"
    rec = r.current_record(NAME)
    assert rec is not None and (rec["version"], rec["previous"], rec["history"]) == ("4", "2", ["2", "1"])
    assert r.promote(NAME, "4") == "4"  # promoting the current version again changes nothing but the time
    rec = r.current_record(NAME)
    assert rec is not None and rec["history"] == ["2", "1"] and r.rolled_back(NAME) == {}
    assert json.loads((r.root / NAME / CURRENT_FILE).read_text())["version"] == "4"  # a string
    with pytest.raises(RegistryError, match="model 'nope' has no version '1'"):
        r.promote("nope", "1")


def test_history_is_capped(tmp_path: Path) -> None:
    r = Registry(tmp_path / "registry")
    for _ in range(HISTORY_MAX + 3):
        r.publish(NAME, {"model.pt": b"x"}, {}, promote=True)
    rec = r.current_record(NAME)
    assert rec is not None and rec["version"] == str(HISTORY_MAX + 3)
    assert rec["history"] == [str(v) for v in range(HISTORY_MAX + 2, 2, -1)]  # the newest 50


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"previous": "1"}', "no 'version' in it"),
        ('["2"]', "not a JSON object"),
        ('{"version": "2"', "unreadable"),
        ("", "unreadable"),
    ],
)
def test_a_broken_current_json_is_an_error_not_a_guess(reg: Registry, content: str, message: str) -> None:
    (reg.root / NAME / CURRENT_FILE).write_text(content)
    with pytest.raises(RegistryError, match=message):
        reg.current(NAME)


def test_a_version_written_as_a_number_is_read_as_a_string(reg: Registry) -> None:
    (reg.root / NAME / CURRENT_FILE).write_text('{"version": 3}')
    assert reg.current(NAME) == "3" and reg.resolve(NAME) == "3"


def test_a_broken_rollbacks_json_is_an_error(reg: Registry) -> None:
    assert reg.rolled_back(NAME) == {}
    (reg.root / NAME / ROLLBACKS_FILE).write_text("{")
    with pytest.raises(RegistryError, match="unreadable"):
        reg.rolled_back(NAME)


# ---- read_verified ----------------------------------------------------------------------------------


def test_read_verified_refuses_entries_and_files_it_cannot_check(reg: Registry) -> None:
    import hashlib

    blob = (reg.root / NAME / "1" / "model.pt").read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    assert reg.read_verified(NAME, 1, {"file": "model.pt", "sha256": sha}) == blob  # size optional
    (reg.root / NAME / "1" / "model.pt").write_bytes(blob + b"!")
    with pytest.raises(IntegrityError, match="sha256 mismatch"):  # without a size, the hash catches it
        reg.read_verified(NAME, "1", {"file": "model.pt", "sha256": sha})
    for entry in [{"file": "model.pt"}, {"file": "model.pt", "sha256": None}, "model.pt", None]:
        with pytest.raises(RegistryError, match="has no file and sha256"):
            reg.read_verified(NAME, "1", entry)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="cannot read it"):
        reg.read_verified(NAME, "1", {"sha256": sha})  # no file
    with pytest.raises(RegistryError, match="cannot read it"):
        reg.read_verified(NAME, "1", {"file": "weights.pt", "sha256": sha})
    with pytest.raises(RegistryError, match="no version '9'"):
        reg.read_verified(NAME, "9", {"file": "model.pt", "sha256": sha})


# ---- temporary leftovers without a lock file: by age --------------------------------------------------


def test_leftovers_without_a_lock_go_once_they_are_old(reg: Registry) -> None:
    d = reg.root / NAME
    old_dir, new_dir, old_file = d / f"{TMP_PREFIX}old", d / f"{TMP_PREFIX}new", d / f"{TMP_PREFIX}f.json"
    old_dir.mkdir()
    (old_dir / "model.pt").write_bytes(b"x")
    new_dir.mkdir()
    old_file.write_text("{}")
    hour_ago = time.time() - STALE_TMP_SECONDS - 60
    for p in (old_dir, old_file):
        os.utime(p, (hour_ago, hour_ago))
    assert sorted(reg.clean_stale(NAME)) == sorted([old_dir.name, old_file.name])
    assert new_dir.is_dir() and not old_dir.exists() and not old_file.exists()
    assert reg.clean_stale(NAME, older_than_s=0) == [new_dir.name]
    assert reg.versions(NAME) == ["1", "2", "3"]  # versions are never touched
    assert reg.clean_stale("nope") == []
