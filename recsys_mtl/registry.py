"""The model registry: versioned, immutable model directories on a filesystem.

```
REGISTRY/NAME/VERSION/manifest.json   what the model is and what it needs (see recsys_mtl.export)
REGISTRY/NAME/VERSION/model.pt        the artifact (TorchScript), its sha256 in the manifest
REGISTRY/NAME/current.json            {"version": "3", "previous": "2", "promoted_at": ...}
REGISTRY/NAME/.tmp-*                  an export in progress (or one that crashed): never a version
```

Guarantees, and how they are kept:

- A reader never sees a half-written version. `publish` writes every file into a temporary,
  dot-prefixed directory beside the versions, fsyncs the files and that directory, then renames it
  to its version name (one atomic `rename(2)`) and fsyncs the parent, so after a crash the version
  is either complete or absent. Readers list only directories whose names are valid versions, and
  dot-prefixed names never are.
- Versions are immutable: a version directory is never rewritten; a new model is a new version.
- Default versions are plain decimal integers ("1", "2", ..., no zero padding: the API sorts them
  numerically, and "3" is what a person types in an A/B config). Concurrent exporters never get the
  same version: each takes max + 1 and renames; `rename` onto an existing (non-empty) version
  fails, and the loser retries with the next number. An explicit version (e.g. a date, which makes
  a nightly export idempotent) must not exist yet.
- `current.json` changes only by `promote`, by an atomic replace of the whole file, so a reader
  sees the old pointer or the new one. A version is stored and compared as a string.

This module is the local-filesystem backend. DESIGN.md names fsspec/pyarrow filesystems as the
scale-out path; object stores have no atomic directory rename, so a remote backend would commit a
version by writing its manifest last (readers would then treat "manifest present" as "complete").
That backend is not written yet; everything that touches the filesystem is inside `Registry`.

This module imports no torch and no training code: the server reads the registry through it.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "current.json"
TMP_PREFIX = ".tmp-"
# Names and versions become directory names: no separators, no leading dot (dot = temporary).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# "current" and "latest" are references, never version names.
_RESERVED = {"current", "latest"}
# A temporary directory this old is the leftover of a crashed export (an export takes seconds).
STALE_TMP_SECONDS = 3600.0


class RegistryError(ValueError):
    """A registry request that cannot be served: unknown name or version, a taken version, a bad name."""


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value) or value in _RESERVED:
        raise RegistryError(
            f"invalid {kind} {value!r}: use letters, digits, '.', '_' and '-' (at most 128, not starting "
            f"with '.', '_' or '-'; not {sorted(_RESERVED)})"
        )
    return value


def _version_key(v: str) -> tuple[int, int, str]:
    """Sort key: integer versions numerically, then the others by name."""
    return (0, int(v), "") if v.isdigit() else (1, 0, v)


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (created, renamed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()


class Registry:
    """A model registry rooted at a local directory (created on first publish).

    Reading: `names`, `versions`, `manifest`, `current`, `resolve`, `version_dir`.
    Writing: `publish` (a new immutable version) and `promote` (switch current.json).
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

    def current(self, name: str) -> str | None:
        """The promoted version of `name`, or None if none was promoted."""
        p = self.root / check_name("model name", name) / CURRENT_FILE
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as e:
            raise RegistryError(f"{p}: unreadable ({e})") from None
        v = data.get("version") if isinstance(data, dict) else None
        if v is None:
            raise RegistryError(f"{p}: no 'version' in it")
        return str(v)

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

    # ---- writing ---------------------------------------------------------------------------
    def promote(self, name: str, version: str | int) -> None:
        """Point current.json at an existing version, by atomic replace (a reader sees the old
        pointer or the new one, never a mix)."""
        v = check_name("version", str(version))
        self.version_dir(name, v)
        d = self.root / name
        previous = self.current(name)
        data = {
            "version": v,
            "previous": previous,
            "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        tmp = d / f"{TMP_PREFIX}{CURRENT_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            _write_file_synced(tmp, _json_bytes(data))
            os.replace(tmp, d / CURRENT_FILE)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(d)

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
    ) -> str:
        """Write a new version atomically and return its name.

        Args:
            name: the model name (the directory under the registry root).
            files: file name -> contents (e.g. {"model.pt": ...}); flat names only.
            manifest: written as manifest.json, with "name" and "version" filled in.
            version: an explicit version (must not exist yet); None takes the next integer.
            max_attempts: how many versions to try when concurrent exporters race for numbers.

        Raises:
            RegistryError: a bad name or file name, or an explicit version that exists.
            OSError: the filesystem failed; no version is visible and no temporary files are left
                (except after a hard kill, which `clean_stale` collects).
        """
        check_name("model name", name)
        for fname in files:
            if fname == MANIFEST_FILE or not _NAME_RE.match(fname):
                raise RegistryError(f"invalid file name {fname!r} for a registry version")
        explicit = None if version is None else check_name("version", str(version))
        d = self.root / name
        created_root = not self.root.exists()
        d.mkdir(parents=True, exist_ok=True)
        if created_root:
            _fsync_dir(self.root.parent)
        _fsync_dir(self.root)
        self.clean_stale(name)
        tmp = d / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            for fname, data in files.items():
                _write_file_synced(tmp / fname, data)
            floor = 1  # past numbers already found taken (even by a directory that is no version)
            for _ in range(max_attempts):
                v = explicit if explicit is not None else str(max(int(self.next_version(name)), floor))
                self._write_manifest(tmp, {**manifest, "name": name, "version": v})
                _fsync_dir(tmp)
                try:
                    # Linux replaces an existing *empty* directory; a version never is one.
                    os.rename(tmp, d / v)
                except OSError as e:
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    if explicit is not None:
                        raise RegistryError(
                            f"{d / v} already exists: versions are immutable, choose another --version"
                        ) from None
                    floor = int(v) + 1  # another exporter took this number: take a later one
                    continue
                _fsync_dir(d)
                return v
            raise RegistryError(f"{d}: no free version after {max_attempts} attempts")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _write_manifest(tmp: Path, manifest: Mapping[str, Any]) -> None:
        p = tmp / MANIFEST_FILE
        p.unlink(missing_ok=True)  # rewritten when a retry changes the version
        _write_file_synced(p, _json_bytes(manifest))

    def clean_stale(self, name: str, older_than_s: float = STALE_TMP_SECONDS) -> list[str]:
        """Remove temporary directories/files of exports that died (older than `older_than_s`)."""
        d = self.root / check_name("model name", name)
        removed: list[str] = []
        if not d.is_dir():
            return removed
        now = time.time()
        for p in d.iterdir():
            if not p.name.startswith(TMP_PREFIX):
                continue
            try:
                if now - p.stat().st_mtime < older_than_s:
                    continue
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p.name)
            except FileNotFoundError:  # another process cleaned it first
                continue
        return removed
