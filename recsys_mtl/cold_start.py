"""Which items are new: the cold-start split of evaluation rows into new and known items.

The product wants good predictions for creatives it has never trained on (content features are
meant for them). To measure that, evaluation reports each task on two groups of rows, by the
recipe's item column (`data.item_column`, an ad creative):

- **new**: the row's item is held out by the hash below (`data.holdout_items`: a fraction of all
  items whose rows the trainer never reads, training and validation alike), or it occurs in no row
  of the model's training days (an item first seen after them);
- **known**: every other row: its item occurs in the training rows and is not held out. A row
  without an item id (null) counts as known: it names no creative that could be new.

The hash (`recsys_mtl.hashing`, under this module's own salt, so the held-out items are
independent of the embedding rows and the same in every process, on every machine, in every run):
SplitMix64 of an integer id (integer, integral float, or a string in canonical decimal form,
`recsys_mtl.ids`: 42, 42.0 and "42" are one item), FNV-1a + SplitMix64 of any other string's UTF-8
bytes. The item is held out when its hash, read as a uniform number in [0, 1) (its top 53 bits),
is below the fraction: about that share of the items (not of the rows), and a larger fraction
holds out a superset. Everything is vectorised (each distinct string hashed once, through
dictionary encoding); no Python loop over rows.

The same 64-bit hash is the item's key when comparing with the training items (`training_items`):
two different ids share a key with probability about 2^-64 per pair (1e-8 for a million items).

Who uses it: `recsys_mtl.reader.ParquetReader(holdout_items=...)` drops the held-out items' rows
before batching (the trainer's training and validation readers); `recsys_mtl.evaluation` splits its
metrics with `new_item_mask` (metrics.json's "cold_start"); `pipelines.new_vs_serving` does the same
for the nightly job's day.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys_mtl.hashing import fnv1a_strings, hash_ints, salt_for, splitmix64
from recsys_mtl.ids import CANONICAL_INT, INT64_MAX, INT64_MIN, int_ids
from recsys_mtl.partitions import DataError, ParquetFileInfo, list_partitions
from recsys_mtl.recipe import Recipe

log = logging.getLogger(__name__)

SALT = salt_for("recsys_mtl.cold_start.holdout_items")
_UNIT = 2.0**-53  # the top 53 bits of a hash as a float in [0, 1)

ItemIds = np.ndarray | pa.Array | pa.ChunkedArray


def _as_arrow(ids: ItemIds) -> pa.Array:
    """Item ids as one Arrow array; a numpy float array's NaN (an integer column with nulls, as
    `column_to_numpy` gives it) becomes null."""
    if isinstance(ids, pa.ChunkedArray):
        return ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
    if isinstance(ids, pa.Array):
        return ids
    arr = np.asarray(ids)
    return pa.array(arr, from_pandas=arr.dtype.kind == "f")


def _string_keys(uniq: pa.Array) -> np.ndarray:
    """Keys of distinct string ids: a canonical decimal integer ("42") as that integer, any other
    string by FNV-1a of its UTF-8 bytes."""
    keys = splitmix64(fnv1a_strings(uniq) ^ SALT)
    looks_int = pc.match_substring_regex(uniq, CANONICAL_INT).fill_null(False)
    pos = np.flatnonzero(looks_int.to_numpy(zero_copy_only=False))
    if len(pos):
        texts = uniq.take(pa.array(pos))
        try:
            values = pc.cast(texts, pa.int64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:  # 19 digits or more: keep those within int64 only
            fits = [INT64_MIN <= int(t) <= INT64_MAX for t in texts.to_pylist()]
            pos = pos[np.asarray(fits, bool)]
            values = np.asarray([int(t) for t in uniq.take(pa.array(pos)).to_pylist()], np.int64)
        keys[pos] = hash_ints(values, SALT)
    return keys


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _int_keys(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(keys, valid) of integer ids (integer, integral float or null arrays; NaN is a missing id)."""
    if pa.types.is_floating(arr.type):
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr)
    try:
        ints = int_ids(arr)
    except ValueError as e:  # IdError: booleans, non-integral numbers, lists
        raise DataError(f"item ids must be integers or strings ({e})") from None
    valid = ints.is_valid().to_numpy(zero_copy_only=False)
    return hash_ints(ints.fill_null(0).to_numpy(zero_copy_only=False), SALT), valid


def item_keys(ids: ItemIds) -> tuple[np.ndarray, np.ndarray]:
    """(key, valid): per row the 64-bit hash of its item id (uint64) and whether the row has an id
    at all (False for null / NaN; its key is then 0). Integer, integral float and string ids, as
    Arrow (dictionary-encoded too) or numpy arrays; an integer id and its canonical decimal string
    ("42") share a key. Anything else is a `DataError`."""
    arr = _as_arrow(ids)
    if not (_is_string(arr.type) or pa.types.is_dictionary(arr.type)):
        keys, valid = _int_keys(arr)
    else:  # each distinct id is hashed once
        enc = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
        uniq = enc.dictionary
        if _is_string(uniq.type):
            uniq_keys, uniq_valid = _string_keys(uniq), uniq.is_valid().to_numpy(zero_copy_only=False)
        else:
            uniq_keys, uniq_valid = _int_keys(uniq)
        idx = enc.indices.fill_null(0).to_numpy(zero_copy_only=False)
        valid = enc.indices.is_valid().to_numpy(zero_copy_only=False)
        if len(uniq):
            keys, valid = uniq_keys[idx], valid & uniq_valid[idx]
        else:
            keys = np.zeros(len(arr), np.uint64)
    return np.where(valid, keys, np.uint64(0)), valid


def _held(keys: np.ndarray, valid: np.ndarray, fraction: float) -> np.ndarray:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return np.zeros(len(keys), bool)
    return valid & ((keys >> np.uint64(11)).astype(np.float64) * _UNIT < fraction)


def held_out(item_ids: ItemIds, fraction: float) -> np.ndarray:
    """Bool mask: the rows whose item is held out at `fraction` (`data.holdout_items`). Never a row
    without an item id; all False at fraction 0."""
    if fraction == 0.0:
        return np.zeros(len(item_ids), bool)
    return _held(*item_keys(item_ids), fraction)


def require_item_column(files: Sequence[ParquetFileInfo], column: str, fraction: float) -> None:
    """A `DataError` naming the file, the column and the field when `fraction`
    (`data.holdout_items`) is above 0 and a file lacks the item column the rows to drop are found by."""
    if fraction <= 0:
        return
    for info in files:
        if column not in info.schema.names:
            raise DataError(
                f"missing column: data.holdout_items = {fraction:g} drops the rows of held-out items, "
                "found by the item column (data.item_column)",
                info.path,
                column,
            )


@dataclass(frozen=True)
class KnownItems:
    """The items of a model's training rows (held-out items left out): their keys (`item_keys`,
    sorted, unique) and where they were read (the data directory and the training days)."""

    keys: np.ndarray
    days: list[str]
    data_dir: str

    def describe(self) -> str:
        span = f"{self.days[0]}..{self.days[-1]}" if self.days else "no days"
        return f"{len(self.keys):,} items of the training days {span}"


def training_items(recipe: Recipe, data_dir: str | Path, days: Sequence[str | dt.date]) -> KnownItems:
    """The items a model trained on `days` under `data_dir` has seen: those of every row, less the
    ones the recipe's `data.holdout_items` holds out. Only the item column of each file is read
    (column projection), each file's keys deduplicated before the next is read. A missing day, or a
    file without the item column, is a `DataError`."""
    column = recipe.data.item_column
    wanted = sorted({dt.date.fromisoformat(str(d)) for d in days})
    if not wanted:
        return KnownItems(np.zeros(0, np.uint64), [], str(data_dir))
    found = list_partitions(data_dir, wanted[0], wanted[-1], recipe.data.partition)
    missing = [d.isoformat() for d in wanted if d not in found]
    if missing:
        raise DataError(f"training day(s) {missing} not found", data_dir)
    parts: list[np.ndarray] = []
    for day in wanted:
        for path in found[day]:
            try:
                col = pq.read_table(path, columns=[column]).column(column)
            except (pa.ArrowInvalid, KeyError, OSError) as e:
                raise DataError(f"cannot read the item column ({e})", path, column) from None
            keys, valid = item_keys(col)
            trained = valid & ~_held(keys, valid, recipe.data.holdout_items)
            parts.append(np.unique(keys[trained]))
    keys = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
    return KnownItems(keys, [d.isoformat() for d in wanted], str(data_dir))


def run_training_items(recipe: Recipe, run_info: Mapping[str, Any]) -> KnownItems | None:
    """The known items of a training run, from its run.json (`data.dir`, `data.train_days`); None,
    with a warning that says why, when they cannot be read (no days recorded, or the data moved)."""
    data = run_info.get("data") or {}
    days, where = data.get("train_days"), data.get("dir")
    if not days or not where:
        log.warning("cold start: the run records no training days; new items = the held-out hash only")
        return None
    try:
        return training_items(recipe, where, days)
    except DataError as e:
        log.warning(
            "cold start: the run's training items are unknown (%s); new items = the held-out hash only", e
        )
        return None


def new_item_mask(
    item_ids: ItemIds, fraction: float, known: KnownItems | np.ndarray | None = None
) -> np.ndarray:
    """Bool mask of the rows whose item is new: held out at `fraction`, or (when `known` is given:
    the training items, `KnownItems` or their keys) absent from the training rows. Rows without an
    item id are never new."""
    keys, valid = item_keys(item_ids)
    new = _held(keys, valid, fraction)
    if known is not None:
        known_keys = known.keys if isinstance(known, KnownItems) else np.asarray(known, np.uint64)
        new |= valid & ~np.isin(keys, known_keys)
    return new


def count_items(item_ids: ItemIds, rows: np.ndarray) -> int:
    """Distinct item ids among the `rows` (a bool mask), nulls not counted."""
    keys, valid = item_keys(item_ids)
    return len(np.unique(keys[rows & valid]))


@dataclass(frozen=True)
class ColdStartSplit:
    """Which evaluation rows are new items (`new`, a bool per row), and what decided it: the held-out
    fraction and the training days whose items are known (None: unknown, the hash alone decided)."""

    new: np.ndarray
    holdout_items: float
    train_days: list[str] | None

    @classmethod
    def of(cls, item_ids: ItemIds, holdout_items: float, known: KnownItems | None) -> ColdStartSplit:
        return cls(
            new_item_mask(item_ids, holdout_items, known),
            holdout_items,
            list(known.days) if known is not None else None,
        )
