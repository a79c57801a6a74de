"""Write a file that torch produces (`torch.save`, `torch.jit.save`) straight to disk, never whole
in memory, with its sha256 and size, and with a clean OSError when the filesystem refuses it.

Why not a `BytesIO` and then the bytes: that is a full copy of the model in memory (two, with
`getvalue`), on top of the model itself (docs/OPERATIONS.md, "Memory").

Why not simply the path: torch's archive writer, writing to a path, aborts the whole process
(`std::terminate`: a C++ exception thrown from its destructor) when a write fails, so a full disk
would kill an export with a core dump instead of the registry's "cannot write to the registry ...
nothing was published". Two ways round it, one per writer:

- `write_stream` (for `torch.save`): torch writes through a Python file object, `_Sink`, which
  hashes the bytes as they pass and, after the first failed write, remembers the error and
  swallows the rest, so torch finishes normally; then the error is raised. Exact, no race.
- `write_path` (for `torch.jit.save`, which writes a path or builds the archive in memory, nothing
  in between; a pipe does not work either, as its writer seeks): a preflight refuses the write
  when the file would not fit (its expected size over the file-size limit: EFBIG; over the free
  space: ENOSPC), then torch writes the path and the file is hashed by reading it back in chunks.
  What the preflight cannot see (another process filling the disk during the write, a quota)
  still aborts the process; the registry's staging keeps even that safe (a dead exporter's
  temporary directory is never a version and the next export removes it).
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
# Room left over the expected size: zip headers, code and pickles of the archive.
HEADROOM_BYTES = 16 << 20


@dataclass(frozen=True)
class WrittenFile:
    """A file as written: its sha256 (hex) and size, for a manifest entry."""

    sha256: str
    bytes: int


def sha256_file(path: str | os.PathLike[str]) -> WrittenFile:
    """The sha256 and size of a file, read in chunks (never the whole file in memory)."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return WrittenFile(h.hexdigest(), n)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Sink:
    """A write-only file object for torch: hashes what passes, keeps the first OSError and
    swallows every write after it (torch's writer must never see a failure, see the module
    docstring)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._h = hashlib.sha256()
        self.bytes = 0
        self.error: OSError | None = None

    def write(self, data: bytes | memoryview) -> int:
        n = len(memoryview(data).cast("B"))
        if self.error is None:
            try:
                self._f.write(data)
                self._h.update(data)
                self.bytes += n
            except OSError as e:
                self.error = e
        return n

    def flush(self) -> None:
        if self.error is None:
            try:
                self._f.flush()
            except OSError as e:
                self.error = e

    @property
    def sha256(self) -> str:
        return self._h.hexdigest()


def write_stream(path: str | os.PathLike[str], produce: Callable[[BinaryIO], None]) -> WrittenFile:
    """Create `path` (it must not exist) with what `produce(file)` writes into a file object
    (e.g. `lambda f: torch.save(obj, f)`), fsynced; its sha256 and size.

    Raises:
        OSError: the filesystem refused the file (ENOSPC, EFBIG, EDQUOT, EROFS, EIO...);
            nothing is left at `path`. Whatever `produce` raises (likewise).
    """
    p = Path(path)
    with open(p, "xb") as f:
        try:
            sink = _Sink(f)
            produce(sink)  # type: ignore[arg-type]  # write and flush are all torch calls
            sink.flush()
            if sink.error is None:
                try:
                    os.fsync(f.fileno())
                except OSError as e:
                    sink.error = e
        except BaseException:
            p.unlink(missing_ok=True)
            raise
    if sink.error is not None:
        p.unlink(missing_ok=True)
        raise sink.error
    return WrittenFile(sink.sha256, sink.bytes)


def preflight(path: Path, expected_bytes: int) -> None:
    """OSError (EFBIG, ENOSPC) if a file of about `expected_bytes` cannot be written at `path`:
    over the process's file-size limit, or over the free space of its filesystem."""
    need = expected_bytes + HEADROOM_BYTES
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and need > soft:
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))
    st = os.statvfs(path.parent)
    if st.f_bavail * st.f_frsize < need:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def write_path(
    path: str | os.PathLike[str], produce: Callable[[str], None], expected_bytes: int
) -> WrittenFile:
    """Create `path` (it must not exist) with what `produce(path)` writes there (e.g.
    `torch.jit.save`), after a `preflight` for `expected_bytes`; fsynced; its sha256 and size
    (read back in chunks).

    Raises:
        FileExistsError: `path` exists. OSError: the preflight or the filesystem refused it;
            nothing is left at `path`. Whatever `produce` raises (likewise).
    """
    p = Path(path)
    preflight(p, expected_bytes)
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))  # claim the name
    try:
        produce(str(p))
        _fsync(p)
        return sha256_file(p)
    except BaseException:
        p.unlink(missing_ok=True)
        raise
