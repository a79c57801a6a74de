"""Atomic file replacement: a reader sees the old file or the new one, never half of one, and
after a crash the file is one or the other.

Every write of a whole file that others read while it changes goes through here: run.json,
metrics.json and checkpoint pointers (recsys_mtl.run, recsys_mtl.checkpoint), the nightly job's
state (pipelines.nightly), the nightly report (pipelines.report), current.json /
rollbacks.json (recsys_mtl.registry, which adds its own lock around them), and the Parquet files
of batch predictions (recsys_mtl.batch_predict, streamed through `atomic_path`).

How: the data goes to a new temporary file in the same directory (same filesystem, so the rename
is atomic), created exclusively under a name no other writer uses (process id + random suffix),
flushed and fsynced; `os.replace` puts it in place; the directory is fsynced so the rename itself
survives a crash. On any failure before the rename the temporary file is removed and the target
is untouched. The temporary name is hidden (`.NAME.PID.RANDOM.tmp`) unless the caller passes a
`tmp_prefix`: the registry passes its own (`.tmp-`), which its stale-file cleaner recognises.

Standard library only (no torch): the registry, and through it the server, use this module.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (created, renamed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_synced(path: str | os.PathLike[str], data: bytes) -> None:
    """Create `path` (FileExistsError if it exists), write `data`, flush and fsync it."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def json_bytes(data: Any) -> bytes:
    """The JSON every atomic writer stores: indented, NaN/inf refused, one final newline."""
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()


def _tmp_path(path: Path, tmp_prefix: str | None) -> Path:
    unique = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    if tmp_prefix is None:
        return path.with_name(f".{path.name}.{unique}.tmp")
    return path.with_name(f"{tmp_prefix}{path.name}.{unique}")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, tmp_prefix: str | None = None) -> None:
    """Replace `path` with `data` atomically (temporary file in the same directory, fsync,
    `os.replace`, fsync of the directory). The directory must exist.

    Args:
        tmp_prefix: the temporary file is named `{tmp_prefix}{name}.{pid}.{random}` (default:
            `.{name}.{pid}.{random}.tmp`).
    """
    p = Path(path)
    tmp = _tmp_path(p, tmp_prefix)
    try:
        write_new_synced(tmp, data)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(p.parent)


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, tmp_prefix: str | None = None) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that streams (e.g. a Parquet writer): the
    caller creates and writes the yielded file and closes it before the block ends; then it is
    fsynced and renamed into place (`os.replace`) and the directory fsynced. If the block raises,
    the temporary file is removed and `path` is untouched. The directory must exist.
    """
    p = Path(path)
    tmp = _tmp_path(p, tmp_prefix)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(p.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, tmp_prefix: str | None = None) -> None:
    """`write_bytes_atomic` of `text` in UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"), tmp_prefix=tmp_prefix)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as JSON (`json_bytes`) atomically, creating the parent directories first."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(p, json_bytes(data))
