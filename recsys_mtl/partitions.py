"""Discovering and checking day partitions: `DATA/dt=YYYY-MM-DD/part-*.parquet`.

Checks read only Parquet footers (schema, row counts, row-group statistics), so validating a month
of data costs milliseconds. A bad file fails with a `DataError` that names the file and the column,
before any training step runs.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsys_mtl.recipe import Recipe


class DataError(ValueError):
    """Data that cannot be used; the message names the file and, where it applies, the column."""

    def __init__(self, message: str, path: str | Path | None = None, column: str | None = None) -> None:
        where = f"{path}" if path else ""
        if column:
            where += f" column '{column}'" if where else f"column '{column}'"
        super().__init__(f"{where}: {message}" if where else message)
        self.path = str(path) if path else None
        self.column = column


@dataclass(frozen=True)
class ParquetFileInfo:
    path: Path
    day: dt.date
    num_rows: int
    row_group_rows: tuple[int, ...]
    schema: pa.Schema

    @property
    def num_row_groups(self) -> int:
        return len(self.row_group_rows)


_DAY = re.compile(r"^(?P<key>[A-Za-z_]+)=(?P<day>\d{4}-\d{2}-\d{2})$")


def parse_day(value: str | dt.date | None) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise DataError(f"expected a date YYYY-MM-DD, got {value!r}") from None


def list_partitions(
    data_dir: str | Path,
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
    partition: str = "dt",
) -> dict[dt.date, list[Path]]:
    """Day -> sorted data files, for days in [start, end] (inclusive; None = open).

    Files whose names start with '_' or '.' (e.g. `_SUCCESS`, `.crc`) are ignored as Hive/Spark do;
    any other file in a partition must be Parquet.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError("data directory does not exist", root)
    lo, hi = parse_day(start), parse_day(end)
    days: dict[dt.date, list[Path]] = {}
    for d in sorted(root.iterdir()):
        m = _DAY.match(d.name)
        if not d.is_dir() or not m or m.group("key") != partition:
            continue
        day = dt.date.fromisoformat(m.group("day"))
        if (lo and day < lo) or (hi and day > hi):
            continue
        files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))
        days[day] = files
    if not days:
        rng = f" between {lo or '-inf'} and {hi or '+inf'}" if (lo or hi) else ""
        raise DataError(f"no '{partition}=YYYY-MM-DD' partitions{rng}", root)
    return days


def _type_ok(kind: str, t: pa.DataType, value_type: str = "int") -> bool:
    """Whether a Parquet column type can feed a feature/label of this kind."""
    if pa.types.is_null(t):
        return True
    if kind == "dense":
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    if kind == "vector":
        if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)):
            return False
        v = t.value_type
        return pa.types.is_integer(v) or pa.types.is_floating(v) or pa.types.is_null(v)
    if kind == "label":
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    if kind in ("multi_id", "sequence"):
        if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
            return False
        return _type_ok("id", t.value_type, value_type)
    ok_int = pa.types.is_integer(t)
    ok_str = pa.types.is_string(t) or pa.types.is_large_string(t)
    return ok_str or ok_int if value_type == "string" else ok_int or pa.types.is_floating(t)


def _expected(kind: str, value_type: str) -> str:
    return {
        "dense": "numbers",
        "vector": "vectors (fixed_size_list<float> or list<float>)",
        "label": "numbers (0/1 labels, indexes or weights)",
        "id": f"{value_type} ids",
        "multi_id": f"lists of {value_type} ids",
        "sequence": f"lists of {value_type} ids",
    }[kind]


def required_columns(recipe: Recipe) -> dict[str, tuple[str, str]]:
    """Column -> (kind, value_type) for every feature and task column the recipe reads."""
    cols: dict[str, tuple[str, str]] = {}
    for f in recipe.features:
        cols.setdefault(f.source, (f.kind, f.value_type))
    for c in recipe.label_columns():
        cols.setdefault(c, ("label", "int"))
    return cols


def _all_null(meta: pq.FileMetaData, schema: pa.Schema, column: str) -> bool | None:
    """True/False from row-group statistics when every row group has them, else None (unknown)."""
    idx = schema.get_field_index(column)
    if idx < 0 or meta.num_row_groups == 0:
        return None
    nulls = 0
    for rg in range(meta.num_row_groups):
        col = meta.row_group(rg).column(idx)
        if col.statistics is None or not col.statistics.has_null_count:
            return None
        nulls += col.statistics.null_count
    return nulls == meta.num_rows


def inspect_file(
    path: Path, day: dt.date, columns: dict[str, tuple[str, str]], label_columns: Iterable[str] = ()
) -> ParquetFileInfo:
    """Open a file's footer and check it against the columns it must provide."""
    if path.stat().st_size == 0:
        raise DataError("empty file (0 bytes): not a Parquet file", path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"not a readable Parquet file ({e})", path) from None
    meta, schema = pf.metadata, pf.schema_arrow
    if meta.num_rows == 0:
        raise DataError("file has no rows", path)
    for col, (kind, value_type) in columns.items():
        if col not in schema.names:
            raise DataError(f"missing column (the recipe needs {_expected(kind, value_type)})", path, col)
        t = schema.field(col).type
        if not _type_ok(kind, t, value_type):
            raise DataError(f"wrong type {t}: expected {_expected(kind, value_type)}", path, col)
    for col in label_columns:
        all_null = _all_null(meta, schema, col)
        if all_null is None:  # no statistics: read that one column
            all_null = pq.read_table(path, columns=[col]).column(col).null_count == meta.num_rows
        if all_null:
            raise DataError("label column is entirely null", path, col)
    rg_rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return ParquetFileInfo(path, day, meta.num_rows, rg_rows, schema)


def inspect_partitions(
    recipe: Recipe,
    data_dir: str | Path,
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
    extra_columns: Sequence[str] = (),
) -> list[ParquetFileInfo]:
    """Every data file in the date range, checked against the recipe (footers only).

    `extra_columns` (e.g. the user id for GAUC, oracle columns for evaluation) must exist; their
    types are the caller's business.
    """
    cols = required_columns(recipe)
    infos: list[ParquetFileInfo] = []
    for day, files in list_partitions(data_dir, start, end, recipe.data.partition).items():
        if not files:
            raise DataError(f"partition {day} has no data files", Path(data_dir))
        for f in files:
            info = inspect_file(f, day, cols, recipe.label_columns())
            for c in extra_columns:
                if c not in info.schema.names:
                    raise DataError("missing column", f, c)
            infos.append(info)
    return infos
