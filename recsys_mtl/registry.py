"""The model registry: versioned, immutable model directories on a filesystem.

```
REGISTRY/NAME/VERSION/manifest.json   what the model is and what it needs (see recsys_mtl.export)
REGISTRY/NAME/VERSION/model.pt        the artifact (TorchScript), its sha256 in the manifest
REGISTRY/NAME/current.json            {"version": "3", "previous": "2", "promoted_at": ...,
                                       "history": ["2", "1"]} (versions current before, newest first)
REGISTRY/NAME/rollbacks.json          {"3": {"rolled_back_at": ..., "to": "2", "by": "rollback"}}:
                                      versions taken out of service, which the nightly job never
                                      promotes again
REGISTRY/NAME/.promote.lock           the lock every change of current.json / rollbacks.json holds
REGISTRY/NAME/.tmp-*                  an export in progress (or one that crashed): never a version
```

Guarantees, and how they are kept:

- A reader never sees a half-written version. `publish` writes every file into a temporary,
  dot-prefixed directory beside the versions, fsyncs the files and that directory, then renames it
  to its version name (one atomic `rename(2)`) and fsyncs the parent, so after a crash the version
  is either complete or absent. Readers list only directories whose names are valid versions, and
  dot-prefixed names never are.
- A model too large to hold twice in memory is published with `stage`: its files are streamed
  into that same temporary directory one by one (hashed as they are written,
  recsys_mtl.streamed_write) and checked there before `StagedVersion.commit` renames it; `publish`
  is `stage` with every file given as bytes. `verified_path` checks a file's sha256 by streaming
  it and hands its loader that same open file.
- The temporary directory of an exporter that died is removed by the next export at once, and a
  live exporter's never: each exporter holds an exclusive `flock` on `.lock` inside its directory
  for as long as it lives (the kernel drops it when the process dies, however it dies), and the
  lock file only gets its name once it is locked, so a cleaner that can take the lock knows the
  owner is gone. A directory without a lock file (an exporter of an older release, or one killed
  in the instant between its last write and its rename) is removed only once it is an hour old.
- Versions are immutable: a version directory is never rewritten; a new model is a new version.
- Default versions are plain decimal integers ("1", "2", ..., no zero padding: the API sorts them
  numerically, and "3" is what a person types in an A/B config). Concurrent exporters never get the
  same version: each takes max + 1 and renames; `rename` onto an existing (non-empty) version
  fails, and the loser retries with the next number. An explicit version (e.g. a date, which makes
  a nightly export idempotent) must not exist yet.
- `current.json` changes only by `promote` (and `rollback`, which promotes), by an atomic replace
  of the whole file, so a reader sees the old pointer or the new one. A version is stored and
  compared as a string. Every change takes `.promote.lock`, so a compare-and-swap
  (`promote(..., expect=V)`: only if V is still current) cannot interleave with another promote.
- A rollback is remembered: `rollback`, and any `promote` that moves current to an older version
  (the plain `Registry.promote` one-liner operators used before `recsys-mtl rollback` existed),
  records the version taken out of service in `rollbacks.json`; `promote(..., unless_rolled_back
  =True)` (the nightly job's) refuses it. An operator who promotes it again by hand clears it.
- Every name and version read from a file (current.json's version, a pointer) goes through
  `check_name` before it becomes a path, so a crafted pointer such as {"version": "../../etc"}
  is refused, never followed.
- A write the filesystem refuses (full disk, quota, read-only, I/O error) is a `RegistryWriteError`
  naming the registry path; nothing half-written stays visible.

This module is the local-filesystem backend. The scale-out path is an fsspec/pyarrow filesystem;
object stores have no atomic directory rename, so a remote backend would commit a version by
writing its manifest last (readers would then treat "manifest present" as "complete").
That backend is not written yet; everything that touches the filesystem is inside `Registry`.

This module imports no torch and no training code: the server reads the registry through it.

The registry in the whole system: (docs/DESIGN.md, "Model registry").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Final

from recsys_mtl.atomic_files import fsync_dir, json_bytes, write_bytes_atomic, write_new_synced
from recsys_mtl.streamed_write import CHUNK, WrittenFile, write_path, write_stream

MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "current.json"
ROLLBACKS_FILE = "rollbacks.json"
PROMOTE_LOCK = ".promote.lock"
TMP_PREFIX = ".tmp-"
# Inside a temporary directory: the exporter's lock. Named only once locked (see _Staging).
STAGING_LOCK = ".lock"
# Names and versions become directory names: no separators, no leading dot (dot = temporary).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# "current" and "latest" are references, never version names.
_RESERVED = {"current", "latest"}
# A temporary directory without a lock file this old is the leftover of a crashed export (an
# export takes seconds); one with a lock file is judged by its lock, at once.
STALE_TMP_SECONDS = 3600.0
# How many earlier current versions current.json remembers (what `rollback` goes back through).
HISTORY_MAX = 50
# Write failures that mean the filesystem is out of room.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class RegistryError(ValueError):
    """A registry request that cannot be served: unknown name or version, a taken version, a bad name."""


class PromoteConflict(RegistryError):
    """`promote(..., expect=V)` found another version current: someone promoted (or rolled back)
    since the caller looked. Nothing was promoted (or published)."""

    def __init__(self, path: Path, expected: str | None, actual: str | None) -> None:
        self.expected, self.actual = expected, actual

        def v(x: str | None) -> str:
            return f"v{x}" if x is not None else "no version"

        super().__init__(
            f"{path}: current is {v(actual)}, not {v(expected)} as expected: it changed since it was "
            "read (another promote or a rollback); nothing was promoted"
        )


class RolledBackError(RegistryError):
    """The version was rolled back by an operator; an automatic promote must not bring it back."""


class IntegrityError(RegistryError):
    """A registry file does not match the size or sha256 its manifest records."""


class RegistryWriteError(OSError):
    """The filesystem refused a registry write (full disk, quota, read-only, I/O error). Nothing
    half-written is visible; the message names the registry path and what was not done."""

    def __init__(self, path: Path, what: str, cause: OSError) -> None:
        name = errno.errorcode.get(cause.errno or 0, "")
        hint = ""
        if cause.errno in _NO_ROOM:
            hint = " (no room: the filesystem is full or over a quota or size limit; free some space)"
        elif cause.errno == errno.EROFS:
            hint = " (the filesystem is mounted read-only)"
        self.message = (
            f"{path}: cannot write to the registry: {cause.strerror or cause}"
            f"{f' [{name}]' if name else ''}{hint}; {what}"
        )
        super().__init__(cause.errno, self.message)

    def __str__(self) -> str:
        return self.message


class _Unset(enum.Enum):
    UNSET = "unset"


# `promote(..., expect=UNSET)`: no compare-and-swap. (`expect=None` means "expect no current".)
UNSET: Final = _Unset.UNSET
# What a compare-and-swap expects to be current: a version, None (nothing), or UNSET (no check).
Expect = str | None | _Unset


def check_name(kind: str, value: str) -> str:
    """`value` if it is a safe directory name (no separator, no leading dot, not a reference);
    RegistryError otherwise. Every name read from a file goes through here before it is a path."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or value in _RESERVED:
        raise RegistryError(
            f"invalid {kind} {value!r}: use letters, digits, '.', '_' and '-' (at most 128, not starting "
            f"with '.', '_' or '-'; not {sorted(_RESERVED)})"
        )
    return value


def _version_key(v: str) -> tuple[int, int, str]:
    """Sort key: integer versions numerically, then the others by name."""
    return (0, int(v), "") if v.isdigit() else (1, 0, v)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _replace_synced(d: Path, target: str, data: bytes) -> None:
    """Replace d/target atomically (temporary file, fsync, rename, fsync d). The temporary file is
    named with TMP_PREFIX, so `clean_stale` removes one that a crash left behind."""
    write_bytes_atomic(d / target, data, tmp_prefix=TMP_PREFIX)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a file is replaced or written: device, inode, size, mtime. (Not ctime:
    renaming another file onto the name changes the open file's link count, hence its ctime,
    and that is harmless to a reader of the open file.)"""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _check_integrity(p: Path, entry: Mapping[str, Any], size: int, digest: str) -> None:
    """IntegrityError unless `size` and `digest` are what the manifest entry records."""
    want_bytes = entry.get("bytes")
    if want_bytes is not None and size != int(want_bytes):
        raise IntegrityError(
            f"{p}: {size} bytes, the manifest says {want_bytes}: the file was modified or "
            "truncated; refusing to load it"
        )
    if digest != entry["sha256"]:
        raise IntegrityError(
            f"{p}: sha256 mismatch (manifest {entry['sha256'][:16]}..., file {digest[:16]}...): "
            "the file was modified or corrupted; refusing to load it"
        )


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path`, or None if another live process holds it.
    FileNotFoundError if there is no such file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Staging:
    """A temporary directory for one export, locked for as long as this process lives.

    The lock file is created under another name, locked, then renamed to STAGING_LOCK, so a
    STAGING_LOCK that a cleaner can lock belongs to a process that is gone. It is unlinked just
    before the directory is renamed to its version (the open fd keeps the lock until `close`), so
    versions never contain it."""

    def __init__(self, model_dir: Path) -> None:
        self.path = model_dir / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.path.mkdir()
        self.fd: int | None = None
        try:
            self._lock()
        except BaseException:
            self.close(remove=True)
            raise

    def _lock(self) -> None:
        pending = self.path / f"{STAGING_LOCK}.new"
        fd = os.open(pending, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # no flock here (some network filesystems): age-based cleaning only
            os.close(fd)
            pending.unlink()
            return
        self.fd = fd
        os.replace(pending, self.path / STAGING_LOCK)

    def unlock_name(self) -> None:
        """Remove the lock file's name before the directory becomes a version."""
        (self.path / STAGING_LOCK).unlink(missing_ok=True)

    def close(self, remove: bool) -> None:
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _check_file_name(fname: str) -> None:
    if fname == MANIFEST_FILE or not _NAME_RE.match(fname):
        raise RegistryError(f"invalid file name {fname!r} for a registry version")


class StagedVersion:
    """A version being written (`Registry.stage`): its files go into a locked temporary directory
    and become a version only by `commit`. Every file is fsynced as it is written."""

    def __init__(self, registry: Registry, name: str, staging: _Staging) -> None:
        self.registry = registry
        self.name = name
        self._staging = staging
        self.committed = False

    @property
    def path(self) -> Path:
        """The temporary directory (readable: a writer may load what it staged to check it)."""
        return self._staging.path

    def _target(self, fname: str) -> Path:
        _check_file_name(fname)
        return self.path / fname

    def write(self, fname: str, data: bytes) -> WrittenFile:
        """Stage a file given as bytes (created exclusively, fsynced); its sha256 and size."""
        p = self._target(fname)
        try:
            write_new_synced(p, data)
        except OSError as e:
            raise RegistryWriteError(self.path.parent, "nothing was published", e) from e
        return WrittenFile(hashlib.sha256(data).hexdigest(), len(data))

    def write_stream(self, fname: str, produce: Callable[[BinaryIO], None]) -> WrittenFile:
        """Stage a file that `produce(file)` writes into a file object (e.g. `torch.save`),
        streamed to disk and hashed on the way, never whole in memory; its sha256 and size."""
        try:
            return write_stream(self._target(fname), produce)
        except OSError as e:
            raise RegistryWriteError(self.path.parent, "nothing was published", e) from e

    def write_path(self, fname: str, produce: Callable[[str], None], expected_bytes: int) -> WrittenFile:
        """Stage a file that `produce(path)` writes to a path (e.g. `torch.jit.save`), after a
        check that about `expected_bytes` fit (recsys_mtl.streamed_write: `write_path`); its
        sha256 and size."""
        try:
            return write_path(self._target(fname), produce, expected_bytes)
        except OSError as e:
            raise RegistryWriteError(self.path.parent, "nothing was published", e) from e

    def commit(
        self,
        manifest: Mapping[str, Any],
        version: str | int | None = None,
        max_attempts: int = 100,
        *,
        promote: bool = False,
        expect: Expect = UNSET,
    ) -> str:
        """Write manifest.json and rename the directory to a free version (see `Registry.publish`
        for the arguments and errors); the version's name."""
        if self.committed:
            raise RegistryError(f"{self.path}: already committed")
        explicit = None if version is None else check_name("version", str(version))
        reg = self.registry
        with reg._locked(self.name) if promote else contextlib.nullcontext(self.path):
            v = reg._commit(self._staging, self.name, manifest, explicit, max_attempts, promote, expect)
        self.committed = True
        return v


class Registry:
    """A model registry rooted at a local directory (created on first publish).

    Reading: `names`, `versions`, `manifest`, `current`, `current_record`, `resolve`,
    `version_dir`, `rolled_back`, `read_verified`, `read_unverified`; `Registry.locate` finds the
    registry, model and version a directory path stands for.
    Writing: `publish` (a new immutable version, optionally promoted in the same locked step),
    `promote` (switch current.json, optionally as a compare-and-swap) and `rollback`.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # ---- reading ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Model names that have at least one version."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _NAME_RE.match(p.name) and p.name not in _RESERVED and self.versions(p.name)
        )

    def versions(self, name: str) -> list[str]:
        """Published versions of `name`, oldest first (integers numerically); [] if none."""
        d = self.root / check_name("model name", name)
        if not d.is_dir():
            return []
        out = [
            p.name
            for p in d.iterdir()
            if p.is_dir()
            and _NAME_RE.match(p.name)
            and p.name not in _RESERVED
            and (p / MANIFEST_FILE).is_file()
        ]
        return sorted(out, key=_version_key)

    def version_dir(self, name: str, version: str | int) -> Path:
        """The directory of an existing version (RegistryError if there is none)."""
        v = check_name("version", str(version))
        d = self.root / check_name("model name", name) / v
        if not (d / MANIFEST_FILE).is_file():
            known = self.versions(name)
            raise RegistryError(
                f"{self.root}: model {name!r} has no version {v!r}"
                + (f" (versions: {', '.join(known[-10:])})" if known else " (no versions at all)")
            )
        return d

    def manifest(self, name: str, version: str | int = "current") -> dict[str, Any]:
        """The manifest of a version (or of what `version` resolves to: "current", "latest")."""
        v = self.resolve(name, version)
        p = self.root / name / v / MANIFEST_FILE
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RegistryError(f"{p}: unreadable manifest ({e})") from None
        if not isinstance(data, dict):
            raise RegistryError(f"{p}: the manifest is not a JSON object")
        return data

    def _read_json(self, p: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as e:
            raise RegistryError(f"{p}: unreadable ({e})") from None
        if not isinstance(data, dict):
            raise RegistryError(f"{p}: not a JSON object")
        return data

    def current_record(self, name: str) -> dict[str, Any] | None:
        """current.json ({"version", "previous", "promoted_at", "history"}) or None, its version
        checked as a name (a crafted pointer such as {"version": "../../etc"} is refused here)."""
        p = self.root / check_name("model name", name) / CURRENT_FILE
        data = self._read_json(p)
        if data is None:
            return None
        v = data.get("version")
        if v is None:
            raise RegistryError(f"{p}: no 'version' in it")
        try:
            data["version"] = check_name("version", str(v))
        except RegistryError as e:
            raise RegistryError(f"{p}: refusing its pointer: {e}") from None
        return data

    def current(self, name: str) -> str | None:
        """The promoted version of `name`, or None if none was promoted."""
        data = self.current_record(name)
        return None if data is None else str(data["version"])

    def resolve(self, name: str, ref: str | int = "current") -> str:
        """A reference -> an existing version: "current" (current.json), "latest" (the highest
        version), or a version itself (an int is accepted for integer versions)."""
        ref_s = str(ref)
        if ref_s == "current":
            v = self.current(name)
            if v is None:
                raise RegistryError(
                    f"{self.root}: model {name!r} has no current version (promote one: "
                    f"`recsys-mtl export ... --promote` or Registry.promote)"
                )
        elif ref_s == "latest":
            known = self.versions(name)
            if not known:
                raise RegistryError(f"{self.root}: model {name!r} has no versions")
            v = known[-1]
        else:
            v = ref_s
        self.version_dir(name, v)  # exists and is complete
        return v

    def rolled_back(self, name: str) -> dict[str, dict[str, Any]]:
        """Versions taken out of service by a rollback (version -> when, to what, by what), which
        the nightly job never promotes again; {} if none."""
        data = self._read_json(self.root / check_name("model name", name) / ROLLBACKS_FILE)
        return {str(k): dict(v) for k, v in (data or {}).items() if isinstance(v, dict)}

    def _entry_path(self, name: str, version: str | int, entry: Mapping[str, Any]) -> Path:
        """The path of the file a manifest entry {"file", "sha256", "bytes"} names, its name checked."""
        d = self.version_dir(name, version)
        if not isinstance(entry, Mapping) or not isinstance(entry.get("sha256"), str):
            raise RegistryError(f"{d}: the manifest entry {entry!r} has no file and sha256")
        return d / check_name("file name", str(entry.get("file")))

    def read_verified(self, name: str, version: str | int, entry: Mapping[str, Any]) -> bytes:
        """The bytes of a version's file described by a manifest entry {"file", "sha256", "bytes"},
        checked against both before they are returned, so the caller loads exactly what was
        checked (there is no window in which the file could change in between).

        Raises:
            RegistryError: no such version, or an entry without file/sha256.
            IntegrityError: the file's size or sha256 differs from the manifest's.
        """
        p = self._entry_path(name, version, entry)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise RegistryError(f"{p}: cannot read it ({e.strerror})") from None
        _check_integrity(p, entry, len(data), hashlib.sha256(data).hexdigest())
        return data

    @contextlib.contextmanager
    def verified_path(self, name: str, version: str | int, entry: Mapping[str, Any]) -> Iterator[Path]:
        """A path to load a version's file from, after its size and sha256 were checked against
        the manifest entry by streaming it (never whole in memory), for a loader that reads a file
        itself (`torch.jit.load(path)`, `torch.load(path, mmap=True)`).

        The bytes loaded are the bytes checked: the file is opened once and the yielded path is
        that open file (/proc/self/fd/N on Linux), so a rename onto its name changes nothing; and
        when the block ends, the file's inode, size and mtime must equal what they were before
        the check (a write in place changes its mtime), else IntegrityError.

        Raises:
            RegistryError: no such version, an entry without file/sha256, an unreadable file.
            IntegrityError: the size or sha256 differs from the manifest's, or the file changed
                while it was loaded.
        """
        p = self._entry_path(name, version, entry)
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError as e:
            raise RegistryError(f"{p}: cannot read it ({e.strerror})") from None
        try:
            before = _identity(os.fstat(fd))
            h = hashlib.sha256()
            size = 0
            try:
                with os.fdopen(os.dup(fd), "rb") as f:
                    while chunk := f.read(CHUNK):
                        h.update(chunk)
                        size += len(chunk)
            except OSError as e:
                raise RegistryError(f"{p}: cannot read it ({e.strerror})") from None
            _check_integrity(p, entry, size, h.hexdigest())
            proc = Path(f"/proc/self/fd/{fd}")
            yield proc if proc.exists() else p
            if _identity(os.fstat(fd)) != before or (not proc.exists() and _identity(p.stat()) != before):
                raise IntegrityError(f"{p}: the file changed while it was loaded; refusing it")
        finally:
            os.close(fd)

    def read_unverified(self, name: str, version: str | int, file: str) -> bytes | None:
        """The bytes of a version's file that its manifest has no checksum for (a version exported
        before that file was checksummed), or None if the version has no such file. Prefer
        `read_verified` whenever the manifest has an entry.

        Raises:
            RegistryError: no such version, or a bad file name.
        """
        p = self.version_dir(name, version) / check_name("file name", file)
        if not p.is_file():
            return None
        return p.read_bytes()

    @classmethod
    def locate(cls, path: str | os.PathLike[str]) -> tuple[Registry, str, str] | None:
        """(registry, model name, version) of a registry directory given by its path, or None if
        `path` is neither: a model directory (REGISTRY/NAME, with current.json) stands for its
        current version, a version directory (REGISTRY/NAME/VERSION, with manifest.json) for
        itself. A relative path is taken from the working directory.

        Raises:
            RegistryError: a model directory whose current.json is crafted or dangling (its
                version is checked as a name and must exist).
        """
        src = Path(os.path.abspath(path))
        if (src / CURRENT_FILE).is_file():
            reg, name = cls(src.parent), src.name
            return reg, name, reg.resolve(name, "current")
        if (src / MANIFEST_FILE).is_file():
            return cls(src.parent.parent), src.parent.name, src.name
        return None

    # ---- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        """Hold the model's promote lock (blocking): every change of current.json and
        rollbacks.json happens under it, so a compare-and-swap is one."""
        d = self.root / check_name("model name", name)
        try:
            fd = os.open(d / PROMOTE_LOCK, os.O_CREAT | os.O_RDWR, 0o644)
        except FileNotFoundError:
            raise RegistryError(f"{self.root}: no model {name!r}") from None
        except OSError as e:
            raise RegistryWriteError(d, "nothing was promoted", e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield d
        finally:
            os.close(fd)

    def promote(
        self,
        name: str,
        version: str | int,
        *,
        expect: Expect = UNSET,
        unless_rolled_back: bool = False,
    ) -> str | None:
        """Point current.json at an existing version, by atomic replace (a reader sees the old
        pointer or the new one, never a mix), under the model's promote lock. Returns the version
        that was current before.

        Args:
            expect: compare-and-swap: promote only if this version (None: no version) is still
                current, else PromoteConflict and nothing changes. For a caller that decided on
                the strength of what was current (the nightly job gates against it).
            unless_rolled_back: refuse (RolledBackError) a version recorded as rolled back. An
                automatic promote passes True; a person promoting a rolled-back version on
                purpose does not, and that clears its record.

        Moving current to an older version records the version it replaces as rolled back, so
        the plain one-liner counts as a rollback too.
        """
        v = check_name("version", str(version))
        self.version_dir(name, v)
        with self._locked(name) as d:
            return self._promote_locked(d, name, v, expect, unless_rolled_back, rollback=False)

    def rollback(self, name: str, to: str | int | None = None) -> tuple[str, str]:
        """Take the current version out of service: record it as rolled back (the nightly job
        never promotes it again) and make `to` current; by default the most recent of the
        versions current before it (current.json's history) that is older than it and not rolled
        back itself, else the newest such version. Returns (rolled-back version, new current)."""
        with self._locked(name) as d:
            record = self.current_record(name)
            if record is None:
                raise RegistryError(f"{self.root}: model {name!r} has no current version to roll back")
            cur = str(record["version"])
            if to is not None:
                target = check_name("version", str(to))
                if target == cur:
                    raise RegistryError(f"{self.root}: v{cur} of {name!r} is already current")
            else:
                target = self._rollback_target(name, cur, record)
            self.version_dir(name, target)
            self._promote_locked(d, name, target, UNSET, False, rollback=True)
            return cur, target

    def _rollback_target(self, name: str, cur: str, record: Mapping[str, Any]) -> str:
        rolled = self.rolled_back(name)
        versions = self.versions(name)
        history = [str(h) for h in (record.get("history") or [record.get("previous")]) if h is not None]
        for v in [*history, *reversed(versions)]:  # the history first, then the newest older one
            if v in versions and v not in rolled and _version_key(v) < _version_key(cur):
                return v
        raise RegistryError(
            f"{self.root}: no earlier version of {name!r} to roll back to from v{cur} "
            f"(rolled back already: {sorted(rolled, key=_version_key) or 'none'}); name one with --to"
        )

    def _promote_locked(
        self,
        d: Path,
        name: str,
        v: str,
        expect: Expect,
        unless_rolled_back: bool,
        rollback: bool,
    ) -> str | None:
        record = self.current_record(name)
        previous = None if record is None else str(record["version"])
        if expect is not UNSET and previous != expect:
            raise PromoteConflict(d / CURRENT_FILE, expect, previous)
        rolled = self.rolled_back(name)
        if v in rolled and unless_rolled_back:
            r = rolled[v]
            raise RolledBackError(
                f"{d}: v{v} was rolled back ({r.get('by', 'rollback')} at {r.get('rolled_back_at')}, "
                f"to v{r.get('to')}): not promoting it again automatically (promote it by hand to "
                "bring it back)"
            )
        changed = v in rolled
        rolled.pop(v, None)  # promoted on purpose: back in service
        if previous is not None and previous != v and (rollback or _version_key(v) < _version_key(previous)):
            rolled[previous] = {
                "rolled_back_at": _now(),
                "to": v,
                "by": "rollback" if rollback else "promote to an older version",
            }
            changed = True
        old_history = [] if record is None else record.get("history") or [record.get("previous")]
        history = list(dict.fromkeys(str(h) for h in [previous, *old_history] if h is not None and h != v))
        data = {
            "version": v,
            "previous": previous,
            "promoted_at": _now(),
            "history": history[:HISTORY_MAX],
        }
        try:
            if changed:  # first: a crash in between leaves a record, never an unrecorded rollback
                _replace_synced(d, ROLLBACKS_FILE, json_bytes(rolled))
            _replace_synced(d, CURRENT_FILE, json_bytes(data))
        except OSError as e:
            raise RegistryWriteError(d, f"v{v} was not promoted (current.json is unchanged)", e) from e
        return previous

    def next_version(self, name: str) -> str:
        """One more than the highest integer version (or "1"). Only a hint under concurrency:
        `publish` retries when another exporter took it first."""
        ints = [int(v) for v in self.versions(name) if v.isdigit()]
        return str(max(ints, default=0) + 1)

    def publish(
        self,
        name: str,
        files: Mapping[str, bytes],
        manifest: Mapping[str, Any],
        version: str | int | None = None,
        max_attempts: int = 100,
        *,
        promote: bool = False,
        expect: Expect = UNSET,
    ) -> str:
        """Write a new version atomically and return its name.

        Args:
            name: the model name (the directory under the registry root).
            files: file name -> contents (e.g. {"model.pt": ...}); flat names only.
            manifest: written as manifest.json, with "name" and "version" filled in.
            version: an explicit version (must not exist yet); None takes the next integer.
            max_attempts: how many versions to try when concurrent exporters race for numbers.
            promote: make it current in the same step: the rename that makes the version visible
                and the switch of current.json happen under the promote lock.
            expect: with `promote`, a compare-and-swap (see `promote`): checked under the lock
                before the version becomes visible, so a conflict publishes nothing.

        Raises:
            RegistryError: a bad name or file name, or an explicit version that exists;
                PromoteConflict (nothing published).
            RegistryWriteError: the filesystem refused a write; no version is visible and no
                temporary files are left (except after a hard kill, which the next export
                collects).
        """
        check_name("model name", name)
        for fname in files:
            _check_file_name(fname)
        explicit = None if version is None else check_name("version", str(version))
        with self.stage(name) as staged:
            for fname, data in files.items():
                staged.write(fname, data)
            return staged.commit(manifest, explicit, max_attempts, promote=promote, expect=expect)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[StagedVersion]:
        """A new version under construction, for a writer that streams its files (an export of a
        model too large to hold a second copy of in memory) or that must check a file before it
        publishes it: write files with `StagedVersion.write` / `write_streamed`, then
        `StagedVersion.commit`. Leaving the block without a commit removes everything staged.
        Same guarantees as `publish` (which is this with every file given as bytes).

        Raises:
            RegistryError: a bad name. RegistryWriteError: the filesystem refused the directory.
        """
        check_name("model name", name)
        d = self.root / name
        try:
            created_root = not self.root.exists()
            d.mkdir(parents=True, exist_ok=True)
            if created_root:
                fsync_dir(self.root.parent)
            fsync_dir(self.root)
            self.clean_stale(name)
            staging = _Staging(d)
        except OSError as e:
            raise RegistryWriteError(d, "nothing was published", e) from e
        staged = StagedVersion(self, name, staging)
        try:
            yield staged
        finally:
            staging.close(remove=not staged.committed)

    def _commit(
        self,
        staging: _Staging,
        name: str,
        manifest: Mapping[str, Any],
        explicit: str | None,
        max_attempts: int,
        promote: bool,
        expect: Expect,
    ) -> str:
        """Rename the staged directory to a free version (and promote it)."""
        d = self.root / name
        if promote and expect is not UNSET and (cur := self.current(name)) != expect:
            raise PromoteConflict(d / CURRENT_FILE, expect, cur)
        tmp = staging.path
        floor = 1  # past numbers already found taken (even by a directory that is no version)
        for _ in range(max_attempts):
            v = explicit if explicit is not None else str(max(int(self.next_version(name)), floor))
            try:
                self._write_manifest(tmp, {**manifest, "name": name, "version": v})
                staging.unlock_name()
                fsync_dir(tmp)
                # Linux replaces an existing *empty* directory; a version never is one.
                os.rename(tmp, d / v)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise RegistryWriteError(d, "nothing was published", e) from e
                if explicit is not None:
                    raise RegistryError(
                        f"{d / v} already exists: versions are immutable, choose another --version"
                    ) from None
                floor = int(v) + 1  # another exporter took this number: take a later one
                continue
            try:
                fsync_dir(d)
            except OSError as e:
                raise RegistryWriteError(d, f"v{v} was renamed into place but not synced", e) from e
            if promote:
                self._promote_locked(d, name, v, UNSET, False, rollback=False)
            return v
        raise RegistryError(f"{d}: no free version after {max_attempts} attempts")

    @staticmethod
    def _write_manifest(tmp: Path, manifest: Mapping[str, Any]) -> None:
        p = tmp / MANIFEST_FILE
        p.unlink(missing_ok=True)  # rewritten when a retry changes the version
        write_new_synced(p, json_bytes(manifest))

    def clean_stale(self, name: str, older_than_s: float = STALE_TMP_SECONDS) -> list[str]:
        """Remove what dead exporters left: a temporary directory whose lock no process holds (at
        once), one without a lock file or a temporary file once older than `older_than_s`."""
        d = self.root / check_name("model name", name)
        removed: list[str] = []
        if not d.is_dir():
            return removed
        now = time.time()
        for p in d.iterdir():
            if not p.name.startswith(TMP_PREFIX):
                continue
            try:
                if p.is_dir() and (p / STAGING_LOCK).exists():
                    fd = _try_lock(p / STAGING_LOCK)
                    if fd is None:
                        continue  # a live exporter's
                    try:
                        shutil.rmtree(p)
                    finally:
                        os.close(fd)
                elif now - p.stat().st_mtime < older_than_s:
                    continue
                elif p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p.name)
            except FileNotFoundError:  # renamed to its version, or another process cleaned it first
                continue
            except OSError:  # not ours to remove (permissions): never a reason to fail an export
                continue
        return removed
