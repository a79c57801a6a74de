"""The Parquet reader: day partitions -> batches of (KJT, dense, targets) for training and evaluation.

- Which data: the days in [start, end] under `DATA/dt=YYYY-MM-DD/`, every file checked against the
  recipe before the first batch (`recsys_mtl.partitions`).
- Which rows for this process: the work unit is a Parquet row group (cut into row ranges when the
  data has few row groups that do not divide evenly over the ranks); rank r of w takes units
  r, r + w, r + 2w, ... of the sorted list, so ranks read disjoint rows without coordination.
- Shuffling (seedable): the unit order is permuted per epoch, then rows are shuffled inside a
  window of `shuffle_buffer` rows (a block shuffle: memory stays bounded by the window, and rows
  from different files and days mix). `shuffle_buffer=0` reads in storage order.
- What is read: the recipe's feature and label columns plus `extra_columns` asked for by the caller
  (user ids for GAUC, `oracle_*` for evaluation). Features only ever come from the recipe's feature
  columns, and the recipe refuses an `oracle_*` column as a feature.
- Held-out items (`holdout_items`; the trainer passes the recipe's `data.holdout_items` to its
  training and validation readers, evaluation keeps every row): the rows of the items
  `recsys_mtl.cold_start.held_out` picks are dropped from each unit as it is read, before windows
  and batches form, so the batching rules above hold for the rows that remain. `num_rows` counts
  those rows (the item column of this rank's units is read once, at construction, to count them),
  so the trainer's steps per epoch (the minimum over ranks of `num_rows // batch_size`) is a number
  of batches every rank really yields.

Batches go through the one `FeatureTransform`, the same the server uses.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_mtl.cold_start import held_out, require_item_column
from recsys_mtl.partitions import DataError, ParquetFileInfo, inspect_partitions
from recsys_mtl.recipe import Recipe
from recsys_mtl.targets import DAY_COLUMN, Targets, targets_from_table
from recsys_mtl.transform import FeatureBatch, FeatureTransform, TransformError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    """The reader's work unit: rows [start, stop) of one row group of one file."""

    info: ParquetFileInfo
    row_group: int
    start: int
    stop: int


def _cuts(n: int, parts: int) -> list[tuple[int, int]]:
    edges = [n * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(edges))


@dataclass
class Batch:
    features: FeatureBatch
    targets: Targets
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return self.features.batch_size

    def slice_rows(self, start: int, stop: int) -> Batch:
        return Batch(
            features=self.features.slice_rows(start, stop),
            targets=self.targets.slice_rows(start, stop),
            extras={k: v[start:stop] for k, v in self.extras.items()},
        )


def column_to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A column as numpy; fixed-length list columns (oracle hazards) become 2-D arrays."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = col.value_lengths().to_numpy(zero_copy_only=False)
        flat = col.flatten().to_numpy(zero_copy_only=False)
        if len(col) and (lengths == lengths[0]).all():
            return flat.reshape(len(col), int(lengths[0]))
        return np.array(np.split(flat, np.cumsum(lengths)[:-1]), dtype=object)
    return col.to_numpy(zero_copy_only=False)


class ParquetReader:
    """Iterates `Batch`es (or raw `pa.Table` batches with `iter_tables`) over a date range."""

    # rows transformed per call when reading in storage order (a memory/overhead trade-off)
    STORAGE_ORDER_WINDOW = 65_536

    def __init__(
        self,
        recipe: Recipe,
        data_dir: str | Path,
        *,
        start: str | dt.date | None = None,
        end: str | dt.date | None = None,
        transform: FeatureTransform | None = None,
        batch_size: int | None = None,
        shuffle_buffer: int | None = None,
        seed: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        extra_columns: Sequence[str] = (),
        drop_last: bool = False,
        label_cutoff: dt.date | None = None,
        holdout_items: float = 0.0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.recipe = recipe
        self.transform = transform or FeatureTransform.from_recipe(recipe)
        self.batch_size = batch_size or recipe.training.batch_size
        self.shuffle_buffer = recipe.training.shuffle_buffer if shuffle_buffer is None else shuffle_buffer
        self.seed = recipe.training.seed if seed is None else seed
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self.label_cutoff = label_cutoff  # hazard labels as known at the end of this day
        self.extra_columns = list(extra_columns)
        self.files: list[ParquetFileInfo] = inspect_partitions(recipe, data_dir, start, end, extra_columns)
        self.columns = list(
            dict.fromkeys([*self.transform.input_columns, *recipe.label_columns(), *self.extra_columns])
        )
        # the rows of held-out items are dropped as units are read (module docstring)
        self.holdout_items = holdout_items
        self.item_column = recipe.data.item_column
        self._drop_item_column = holdout_items > 0 and self.item_column not in self.columns
        if holdout_items > 0:
            require_item_column(self.files, self.item_column, holdout_items)
            if self._drop_item_column:
                self.columns.append(self.item_column)
        units = [Unit(info, rg, 0, n) for info in self.files for rg, n in enumerate(info.row_group_rows)]
        if world_size > 1 and len(units) % world_size and len(units) < 16 * world_size:
            # Few row groups that do not divide evenly over the ranks: ranks must take the same
            # number of steps, so an uneven split would idle most of a row group's rows. Cut each
            # row group into `world_size` row ranges instead (each rank reads a slice of every row
            # group: more reading, which only happens when the data is small).
            parts = world_size
            units = [
                Unit(u.info, u.row_group, u.start + a, u.start + b)
                for u in units
                for a, b in _cuts(u.stop - u.start, parts)
                if b > a
            ]
        if len(units) < world_size:
            raise DataError(
                f"{self.num_rows_total(units)} rows cannot be split over {world_size} ranks", data_dir
            )
        self.units = units[rank::world_size]
        self.epoch = 0
        self.rows_dropped = 0  # rows of held-out items in this rank's units (each epoch)
        if holdout_items > 0:
            self.rows_dropped = self._count_held_out_rows()
            self._log_and_check_holdout(data_dir)

    @property
    def num_rows(self) -> int:
        """Rows this rank reads per epoch (the held-out items' rows dropped)."""
        return self.num_rows_total(self.units) - self.rows_dropped

    def _count_held_out_rows(self) -> int:
        """Rows of held-out items in this rank's units; only the item column is read."""
        dropped = 0
        files: dict[Path, pq.ParquetFile] = {}
        for u in self.units:
            if u.info.path not in files:
                files[u.info.path] = pq.ParquetFile(u.info.path)
            try:
                col = files[u.info.path].read_row_group(u.row_group, columns=[self.item_column]).column(0)
            except (pa.ArrowInvalid, OSError) as e:
                raise DataError(f"cannot read row group {u.row_group} ({e})", u.info.path) from None
            dropped += int(held_out(col.slice(u.start, u.stop - u.start), self.holdout_items).sum())
        return dropped

    def _log_and_check_holdout(self, data_dir: str | Path) -> None:
        """Log the rows dropped; a `DataError` naming the field when no row is left to read."""
        total = self.num_rows_total(self.units)
        where = f" on rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""
        log.info(
            "data.holdout_items = %g: dropping %s of %s rows%s (items held out for the cold-start "
            "evaluation)",
            self.holdout_items, f"{self.rows_dropped:,}", f"{total:,}", where,
        )  # fmt: skip
        if self.num_rows == 0:
            raise DataError(
                f"data.holdout_items = {self.holdout_items:g} leaves no rows to read{where}: all "
                f"{total:,} rows of {self.days[0]}..{self.days[-1]} belong to held-out items (lower "
                "data.holdout_items, or use data with more items)",
                data_dir,
                self.item_column,
            )

    @staticmethod
    def num_rows_total(units: Sequence[Unit]) -> int:
        return sum(u.stop - u.start for u in units)

    @property
    def days(self) -> list[dt.date]:
        return sorted({info.day for info in self.files})

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle differently for each epoch (same seed + epoch + rank -> same order)."""
        self.epoch = epoch

    def _read_unit(self, u: Unit) -> pa.Table:
        try:
            t = pq.ParquetFile(u.info.path).read_row_group(u.row_group, columns=self.columns)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"cannot read row group {u.row_group} ({e})", u.info.path) from None
        if (u.start, u.stop) != (0, t.num_rows):
            t = t.slice(u.start, u.stop - u.start)
        if self.transform.vector_features:  # checked here, while a row index still means the file's
            try:
                self.transform.check_vectors(t)
            except TransformError as e:
                at = f"row {u.start + e.row}" if e.row is not None else f"rows {u.start}-{u.stop - 1}"
                more = (
                    f" ({e.rows} rows of the row group at fault)" if e.row is not None and e.rows > 1 else ""
                )
                raise DataError(
                    f"row group {u.row_group}, {at}: {e.message}{more}", u.info.path, e.field
                ) from None
        if self.holdout_items > 0:  # before windows and batches form: the batching rules hold
            keep = ~held_out(t.column(self.item_column), self.holdout_items)
            if not keep.all():
                t = t.filter(pa.array(keep))
            if self._drop_item_column:
                t = t.drop_columns([self.item_column])
        if self.label_cutoff is not None:
            day = (u.info.day - dt.date(1970, 1, 1)).days
            t = t.append_column(DAY_COLUMN, pa.array(np.full(t.num_rows, day, np.int32)))
        return t

    def _windows(self) -> Iterator[pa.Table]:
        """Windows of rows (shuffled when asked) whose sizes are multiples of `batch_size`, except
        possibly the last. A window is also the unit the transform runs on: transforming many rows
        per call amortises the per-call cost of the columnar kernels."""
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        shuffle = self.shuffle_buffer > 0
        order = rng.permutation(len(self.units)) if shuffle else np.arange(len(self.units))
        bs = self.batch_size
        window = max(self.shuffle_buffer if shuffle else self.STORAGE_ORDER_WINDOW, bs)
        buf: list[pa.Table] = []
        buf_rows = 0
        for i in order:
            t = self._read_unit(self.units[int(i)])
            buf.append(t)
            buf_rows += t.num_rows
            if buf_rows < window:
                continue
            table = pa.concat_tables(buf) if len(buf) > 1 else buf[0]
            if shuffle:
                table = table.take(rng.permutation(table.num_rows))
            full = table.num_rows // bs * bs
            yield table.slice(0, full)
            rest = table.slice(full)
            buf, buf_rows = ([rest] if rest.num_rows else []), rest.num_rows
        if buf_rows:
            table = pa.concat_tables(buf) if len(buf) > 1 else buf[0]
            if shuffle:
                table = table.take(rng.permutation(table.num_rows))
            keep = table.num_rows // bs * bs if self.drop_last else table.num_rows
            if keep:
                yield table.slice(0, keep)

    def iter_tables(self) -> Iterator[pa.Table]:
        """Batches of raw rows (`batch_size` each; the last one shorter unless `drop_last`)."""
        for w in self._windows():
            for i in range(0, w.num_rows, self.batch_size):
                yield w.slice(i, self.batch_size)

    def to_batch(self, table: pa.Table) -> Batch:
        """Raw rows -> model inputs, targets and the requested extra columns."""
        return Batch(
            features=self.transform(table),
            targets=targets_from_table(self.recipe, table, self.label_cutoff),
            extras={c: column_to_numpy(table.column(c)) for c in self.extra_columns},
        )

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_batches()

    def iter_batches(self, skip: int = 0) -> Iterator[Batch]:
        """The epoch's batches after the first `skip` (resuming mid-epoch): skipped windows are read
        (the shuffle's random stream must advance identically) but not transformed."""
        bs = self.batch_size
        for w in self._windows():
            n_batches = -(-w.num_rows // bs)
            if skip >= n_batches:
                skip -= n_batches
                continue
            big = self.to_batch(w)
            for i in range(skip * bs, big.num_rows, bs):
                yield big.slice_rows(i, min(i + bs, big.num_rows))
            skip = 0
