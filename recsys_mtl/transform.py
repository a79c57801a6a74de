"""The feature transform: raw columns -> (TorchRec KeyedJaggedTensor, dense tensor).

This is the ONE place where raw values become model inputs. The offline reader and the scoring
server both call `FeatureTransform.__call__`, and the exported manifest carries `spec()` so the
server rebuilds the identical transform without the recipe file or any training code.

Rules (README, "Bring your own data" and "The feature transform"):
- categorical values are parsed by `recsys_mtl.ids` (int64 ids, canonical decimal strings for
  integer ids, never a silent wrap-around) and hashed by `recsys_mtl.hashing` (stable across
  processes); a feature with an explicit `vocabulary` maps values by position instead. Missing and
  out-of-vocabulary values map to the reserved row 0.
- `multi_id` and `sequence` lists are truncated to `max_len` (the first `max_len` values: sequences
  are stored newest first). They stay jagged in the KJT; models that need a fixed length pad there.
  A null list is an empty list; a null element inside a list maps to row 0.
- dense values: missing, NaN and +-inf become the feature's `default`; then optional signed log1p,
  standardisation with stored statistics, and clipping. Nothing non-finite reaches the model.
- vector values (`fixed_size_list<number>` or `list<number>`, `dim` per row): a row of the wrong
  length, a null or non-finite element is a `TransformError` naming the column and the row (for a
  request, the candidate index): a vector is an encoder's output, so a broken one is a broken
  pipeline, not a value to guess. A null vector is zeros plus a missing indicator column of 1
  (`missing: zeros`) or an error (`missing: error`); `normalize: l2` scales rows to unit length.
  The dense tensor holds the scalar features, then each vector's block (`recipe.dense_layout`).

All work is columnar (pyarrow compute + numpy); there is no Python loop over rows. Whatever goes
wrong with one feature's raw values is a `TransformError` naming its column.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_mtl.hashing import hash_ints, hash_strings, salt_for, to_rows
from recsys_mtl.ids import IdError, int_ids, string_ids
from recsys_mtl.recipe import DenseStats, FeatureSpec, Recipe, dense_layout

SPEC_VERSION = 1

Columns = pa.Table | pa.RecordBatch | Mapping[str, Any]


class TransformError(ValueError):
    """Raw input that cannot be transformed; `field` names the offending feature column. Where rows
    are at fault, `row` is the first one's index in the batch (for a request: the candidate index)
    and `rows` how many there are; `message` does not repeat them, so each caller says where the
    row is in its own words (the reader: file, row group and row; the server: the candidate)."""

    def __init__(self, field: str, message: str, row: int | None = None, rows: int = 1) -> None:
        where = f"row {row}: " if row is not None else ""
        more = f" ({rows} rows at fault)" if row is not None and rows > 1 else ""
        super().__init__(f"{field}: {where}{message}{more}")
        self.field = field
        self.message = message
        self.row = row
        self.rows = rows


def value_kind(t: pa.DataType, plural: bool = True) -> str:
    """An Arrow type in JSON words where there are some ("strings", "a number")."""
    for test, one, many in (
        (pa.types.is_string, "a string", "strings"),
        (pa.types.is_large_string, "a string", "strings"),
        (pa.types.is_boolean, "a boolean", "booleans"),
        (pa.types.is_integer, "a number", "numbers"),
        (pa.types.is_floating, "a number", "numbers"),
        (lambda t: pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t),
         "a list", "lists"),
    ):  # fmt: skip
        if test(t):
            return many if plural else one
    return str(t)


@dataclass
class FeatureBatch:
    """Model inputs for a batch of rows: sparse ids (KJT keyed by feature name) and dense floats.

    Per row (``group`` None): one model row per candidate. Grouped (`FeatureTransform.grouped`):
    the first `user_rows` rows hold the request-level features of each user, the next
    `batch_size` rows each candidate's item features, and ``group[b]`` is candidate b's user row;
    `group` never decreases (users keep the order of their candidates), which `slice_rows` uses.
    """

    sparse: KeyedJaggedTensor
    dense: torch.Tensor  # [rows, dense width] float32: scalars, then vector blocks (dense_layout)
    group: torch.Tensor | None = None  # [candidates] int64 user row of each candidate (grouped)
    _row_offsets: torch.Tensor | None = field(default=None, repr=False)  # [keys, rows + 1], lazy

    @property
    def batch_size(self) -> int:
        """Candidates (the rows that get scores)."""
        return int(self.dense.shape[0] if self.group is None else self.group.shape[0])

    @property
    def user_rows(self) -> int:
        """Rows holding users' request-level features (0 per row)."""
        return int(self.dense.shape[0]) - self.batch_size

    def slice_rows(self, start: int, stop: int) -> FeatureBatch:
        """Candidates [start, stop) as a new batch (cheap: one slice per key, no re-transform);
        grouped, with the user rows they read.

        The reader transforms a whole window of rows at once, which amortises the per-call cost of
        the columnar kernels, then hands out training batches with this; the server cuts a large
        merged batch into forwards of bounded size.
        """
        if self.group is None:
            return FeatureBatch(sparse=self._take([(start, stop)]), dense=self.dense[start:stop])
        u = self.user_rows
        group = self.group[start:stop]
        lo, hi = (int(group[0]), int(group[-1]) + 1) if stop > start else (0, 0)
        ranges = [(lo, hi), (u + start, u + stop)]
        return FeatureBatch(
            sparse=self._take(ranges),
            dense=torch.cat([self.dense[lo:hi], self.dense[u + start : u + stop]]),
            group=group - lo,
        )

    def _take(self, ranges: Sequence[tuple[int, int]]) -> KeyedJaggedTensor:
        """The KJT of the rows in `ranges` (in that order), each key's values sliced, not gathered."""
        keys = self.sparse.keys()
        rows = int(self.dense.shape[0])
        lengths = self.sparse.lengths().view(len(keys), rows)
        if self._row_offsets is None:
            per_key = torch.zeros(len(keys), rows + 1, dtype=torch.int64)
            torch.cumsum(lengths, dim=1, out=per_key[:, 1:])
            base = torch.zeros(len(keys), 1, dtype=torch.int64)
            base[1:, 0] = torch.cumsum(per_key[:-1, -1], dim=0)
            self._row_offsets = per_key + base
        values = self.sparse.values()
        bounds = [(self._row_offsets[:, a].tolist(), self._row_offsets[:, b].tolist()) for a, b in ranges]
        parts = [values[lo[k] : hi[k]] for k in range(len(keys)) for lo, hi in bounds]
        return KeyedJaggedTensor(
            keys=keys,
            values=torch.cat(parts) if parts else values[:0],
            lengths=torch.cat([lengths[:, a:b] for a, b in ranges], dim=1).reshape(-1),
            stride=sum(b - a for a, b in ranges),
        )

    @staticmethod
    def concat(batches: Sequence[FeatureBatch]) -> FeatureBatch:
        """Stack batches with the same keys row-wise (the server merges concurrent requests into one
        forward with this). One split + one cat per key: no loop over rows. Grouped batches stay
        grouped: every batch's user rows first, then every batch's candidates."""
        if len(batches) == 1:
            return batches[0]
        keys = batches[0].sparse.keys()
        grouped = batches[0].group is not None
        if any((b.group is not None) != grouped for b in batches):
            raise ValueError("cannot concatenate grouped and per-row feature batches")
        # per key, the pieces of values and lengths in row order: (users of each batch, then
        # candidates of each batch) grouped, or each batch's rows per row
        sections = 2 if grouped else 1
        per_key_values: list[list[list[torch.Tensor]]] = [[[] for _ in range(sections)] for _ in keys]
        per_key_lengths: list[list[list[torch.Tensor]]] = [[[] for _ in range(sections)] for _ in keys]
        for b in batches:
            if b.sparse.keys() != keys:
                raise ValueError("cannot concatenate feature batches with different keys")
            rows = int(b.dense.shape[0])
            lengths = b.sparse.lengths().view(len(keys), rows)
            cut = b.user_rows if grouped else rows
            head, tail = lengths[:, :cut].sum(dim=1).tolist(), lengths[:, cut:].sum(dim=1).tolist()
            counts = [c for pair in zip(head, tail, strict=True) for c in pair]
            pieces = b.sparse.values().split(counts)
            for k in range(len(keys)):
                per_key_values[k][0].append(pieces[2 * k])
                per_key_lengths[k][0].append(lengths[k, :cut])
                if grouped:
                    per_key_values[k][1].append(pieces[2 * k + 1])
                    per_key_lengths[k][1].append(lengths[k, cut:])
        flat_values = [t for key in per_key_values for sec in key for t in sec]
        flat_lengths = [t for key in per_key_lengths for sec in key for t in sec]
        dense_parts = [b.dense[: b.user_rows] for b in batches] + [b.dense[b.user_rows :] for b in batches]
        group = None
        if grouped:
            offsets = np.cumsum([0] + [b.user_rows for b in batches[:-1]]).tolist()
            group = torch.cat([b.group + off for b, off in zip(batches, offsets, strict=True)])  # type: ignore[operator]
        dense = torch.cat(dense_parts)
        return FeatureBatch(
            sparse=KeyedJaggedTensor(
                keys=keys,
                values=torch.cat(flat_values),
                lengths=torch.cat(flat_lengths),
                stride=int(dense.shape[0]),
            ),
            dense=dense,
            group=group,
        )


def _column(columns: Columns, name: str) -> pa.Array:
    """Fetch one column as a single contiguous pyarrow Array."""
    if isinstance(columns, pa.Table | pa.RecordBatch):
        if name not in columns.schema.names:
            raise TransformError(name, "missing column")
        col = columns.column(name)
    else:
        if name not in columns:
            raise TransformError(name, "missing column")
        col = columns[name]
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    elif not isinstance(col, pa.Array):
        try:
            col = pa.array(col)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise TransformError(name, f"cannot read values: {e}") from None
    return col


@contextmanager
def _naming(f: FeatureSpec) -> Iterator[None]:
    """Any failure while transforming one feature becomes a TransformError naming its column:
    raw values come from outside (a request, a user's Parquet), and whatever Arrow or numpy
    raises on them (a type it cannot cast, an integer it cannot hold) is that column's fault."""
    try:
        yield
    except TransformError:
        raise
    except IdError as e:
        raise TransformError(f.source, str(e)) from None
    except (pa.ArrowException, OverflowError, ValueError, TypeError, IndexError) as e:
        raise TransformError(f.source, f"cannot transform its values ({type(e).__name__}: {e})") from None


def _num_rows(columns: Columns) -> int | None:
    if isinstance(columns, pa.Table | pa.RecordBatch):
        return columns.num_rows
    return None


class FeatureTransform:
    """Raw columns -> `FeatureBatch`, for a fixed list of feature specs."""

    def __init__(self, features: Sequence[FeatureSpec]) -> None:
        self.features: list[FeatureSpec] = list(features)
        self.sparse_features = [f for f in self.features if f.is_sparse]
        self.dense_features = [f for f in self.features if f.kind == "dense"]  # scalars
        self.vector_features = [f for f in self.features if f.kind == "vector"]
        self.sparse_keys: list[str] = [f.name for f in self.sparse_features]
        self.dense_names: list[str] = [f.name for f in self.dense_features]
        self.dense_layout = dense_layout(self.features)
        self.dense_width: int = sum(f.dense_width for f in (*self.dense_features, *self.vector_features))
        self._spec: dict[str, FeatureSpec] = {f.name: f for f in self.features}
        self._salts = {f.name: salt_for(f.table_name) for f in self.sparse_features}
        self._vocab: dict[str, pa.Array] = {
            f.name: pa.array(f.vocabulary, type=self._value_arrow_type(f))
            for f in self.sparse_features
            if f.vocabulary is not None
        }

    # ---- construction / serialisation ----
    @classmethod
    def from_recipe(cls, recipe: Recipe) -> FeatureTransform:
        return cls(recipe.features)

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable description; `from_spec(spec())` rebuilds an identical transform."""
        return {"version": SPEC_VERSION, "features": [f.model_dump(mode="json") for f in self.features]}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> FeatureTransform:
        if spec.get("version") != SPEC_VERSION:
            raise ValueError(f"unsupported transform spec version {spec.get('version')!r}")
        return cls([FeatureSpec.model_validate(f) for f in spec["features"]])

    @property
    def input_columns(self) -> list[str]:
        return list(dict.fromkeys(f.source for f in self.features))

    def with_dense_stats(self, stats: Mapping[str, DenseStats]) -> FeatureTransform:
        """A copy whose dense features standardise with `stats` (name -> mean/std)."""
        return FeatureTransform(
            [f.model_copy(update={"stats": stats[f.name]}) if f.name in stats else f for f in self.features]
        )

    def fit_dense_stats(self, columns: Columns) -> dict[str, DenseStats]:
        """Mean/std of each dense feature after default-filling and log, measured on `columns`."""
        out: dict[str, DenseStats] = {}
        for f in self.dense_features:
            x = self._dense_raw(f, _column(columns, f.source))
            std = float(x.std())
            out[f.name] = DenseStats(mean=float(x.mean()), std=std if std > 1e-12 else 1.0)
        return out

    # ---- the transform ----
    def __call__(self, columns: Columns, shared: Mapping[str, Any] | None = None) -> FeatureBatch:
        """Transform rows, one model row per row (what training, evaluation and models exported
        before grouped batches read).

        Args:
            columns: one value per row for each input column (a pyarrow Table/RecordBatch or a
                mapping column -> values).
            shared: optional columns with ONE value that holds for every row (a request's user and
                context features). Each is transformed once and broadcast, so a 2,000-candidate
                request hashes its user's behaviour sequences once, not 2,000 times. A column given
                here is not read from `columns`.
        """
        return self._transform(columns, shared or {}, grouped=False)

    def grouped(self, columns: Columns, shared: Mapping[str, Any] | None = None) -> FeatureBatch:
        """Transform rows into a grouped batch (`FeatureBatch.group`), what an exported model's
        `forward_grouped` reads: U user rows holding the request-level (user and context)
        features, then one row per candidate holding the item features.

        When every request-level feature is in `shared` (a score request that sends the user once),
        U = 1: the user's features are transformed, looked up and multiplied once for all the
        candidates. Otherwise (a file of rows, or a request that sends a user feature per
        candidate) each row is its own user: U = the number of rows, the same work as `__call__`.
        Arguments as in `__call__`.
        """
        return self._transform(columns, shared or {}, grouped=True)

    def as_grouped(self, batch: FeatureBatch) -> FeatureBatch:
        """A per-row batch (`__call__`) in the grouped layout with one user per row: what `grouped`
        gives for the same rows, without transforming them again (the values stay where they are;
        each key's lengths move to the user rows or the candidate rows)."""
        if batch.group is not None:
            return batch
        n = batch.batch_size
        keys = batch.sparse.keys()
        lengths = batch.sparse.lengths().view(len(keys), n)
        none = torch.zeros_like(lengths)
        request_level = torch.tensor([self._spec[k].request_level for k in keys], dtype=torch.bool)
        placed = torch.where(
            request_level.unsqueeze(1), torch.cat([lengths, none], dim=1), torch.cat([none, lengths], dim=1)
        )
        sparse = KeyedJaggedTensor(
            keys=keys, values=batch.sparse.values(), lengths=placed.reshape(-1), stride=2 * n
        )
        # each row's dense values on both sides: the model reads a side's own columns only
        dense = torch.cat([batch.dense, batch.dense])
        return FeatureBatch(sparse=sparse, dense=dense, group=torch.arange(n, dtype=torch.int64))

    def request_of(self, columns: Columns) -> tuple[dict[str, Any], dict[str, Any]]:
        """`columns` as a score request for one user: each request-level feature's first value
        sent once (`shared`), every other column per row. (Export checks, warm-up and benchmarks
        build requests from rows with it.)"""
        once = {f.source for f in self.features if f.request_level}
        names = columns.schema.names if isinstance(columns, pa.Table | pa.RecordBatch) else list(columns)
        per_row = {c: _column(columns, c) for c in names if c not in once}
        shared = {c: _column(columns, c).slice(0, 1) for c in names if c in once}
        return per_row, shared

    def _transform(self, columns: Columns, shared: Mapping[str, Any], grouped: bool) -> FeatureBatch:
        n = _num_rows(columns)
        # Lengths are checked against the per-row columns first; shared columns follow that count.
        if n is None:
            n = next((len(_column(columns, f.source)) for f in self.features if f.source not in shared), None)
        if n is None:
            raise TransformError("(batch)", "no per-row feature columns given")
        # request-level features once (U = 1) when all of them came once; else one user per row
        once = grouped and all(f.source in shared for f in self.features if f.request_level)
        users = 1 if once else n

        def place(f: FeatureSpec, rows: np.ndarray, per_row: int) -> np.ndarray:
            """`rows` (one entry per user or per candidate) at their place in the batch's rows:
            per row as they are; grouped, users' entries first, then candidates', the other side
            zero (an empty list, a zero column)."""
            if not grouped:
                return rows
            pad = np.zeros((per_row, *rows.shape[1:]), rows.dtype)
            return np.concatenate([rows, pad] if f.request_level else [pad, rows])

        def count(f: FeatureSpec) -> int:  # rows this feature has: users or candidates
            return users if grouped and f.request_level else n

        values: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        for f in self.sparse_features:
            with _naming(f):
                if f.source in shared:
                    v, ln = self._sparse(f, self._one(shared, f))
                    if count(f) > 1:
                        v, ln = np.tile(v, count(f)), np.repeat(ln, count(f))
                else:
                    col = _column(columns, f.source)
                    n = self._check_len(f, col, n)
                    v, ln = self._sparse(f, col)
            values.append(v)
            lengths.append(place(f, ln, n if f.request_level else users))
        dense_cols: list[np.ndarray] = []
        for f in self.dense_features:
            with _naming(f):
                if f.source in shared:
                    x = np.repeat(self._dense(f, self._one(shared, f)), count(f))
                else:
                    col = _column(columns, f.source)
                    n = self._check_len(f, col, n)
                    x = self._dense(f, col)
            dense_cols.append(place(f, x, n if f.request_level else users))
        blocks = [np.stack(dense_cols, axis=1)] if dense_cols else []
        for f in self.vector_features:
            with _naming(f):
                if f.source in shared:
                    x = np.repeat(self._vector(f, self._one(shared, f)), count(f), axis=0)
                else:
                    col = _column(columns, f.source)
                    n = self._check_len(f, col, n)
                    x = self._vector(f, col)
            blocks.append(place(f, x, n if f.request_level else users))
        rows = users + n if grouped else n
        dense = np.concatenate(blocks, axis=1) if blocks else np.zeros((rows, 0), np.float32)
        sparse = KeyedJaggedTensor(
            keys=self.sparse_keys,
            values=torch.from_numpy(np.concatenate(values) if values else np.zeros(0, np.int64)),
            lengths=torch.from_numpy(
                np.concatenate(lengths).astype(np.int32) if lengths else np.zeros(0, np.int32)
            ),
            stride=rows,
        )
        group = None
        if grouped:
            group = torch.zeros(n, dtype=torch.int64) if once else torch.arange(n, dtype=torch.int64)
        return FeatureBatch(
            sparse=sparse, dense=torch.from_numpy(dense.astype(np.float32, copy=False)), group=group
        )

    @staticmethod
    def _one(shared: Mapping[str, Any], f: FeatureSpec) -> pa.Array:
        col = _column(shared, f.source)
        if len(col) != 1:
            raise TransformError(f.source, f"a shared column needs exactly one value, got {len(col)}")
        return col

    @staticmethod
    def _check_len(f: FeatureSpec, col: pa.Array, n: int | None) -> int:
        if n is not None and len(col) != n:
            raise TransformError(f.source, f"has {len(col)} values, expected {n} (one per row)")
        return len(col)

    # ---- categorical ----
    @staticmethod
    def _value_arrow_type(f: FeatureSpec) -> pa.DataType:
        return pa.string() if f.value_type == "string" else pa.int64()

    def _sparse(self, f: FeatureSpec, col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Rows and per-row lengths of one categorical feature."""
        if f.kind == "id":
            if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                raise TransformError(f.source, "expected one value per row, got a list")
            return self._rows(f, col), np.ones(len(col), np.int32)
        if pa.types.is_null(col.type):  # an all-null column: every list is empty
            return np.zeros(0, np.int64), np.zeros(len(col), np.int32)
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            raise TransformError(f.source, f"expected a list of values per row, got {col.type}")
        assert f.max_len is not None
        sliced = pc.list_slice(col, 0, f.max_len)
        ln = pc.list_value_length(sliced).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int32)
        return self._rows(f, sliced.flatten()), ln

    def _rows(self, f: FeatureSpec, vals: pa.Array) -> np.ndarray:
        """Embedding rows of flat categorical values: hashed or by vocabulary, nulls -> row 0."""
        vals = self._as_value_type(f, vals)
        if f.vocabulary is not None:
            idx = pc.index_in(vals, value_set=self._vocab[f.name])
            return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        if f.value_type == "string":
            h = hash_strings(vals, self._salts[f.name])
        else:
            h = hash_ints(vals.fill_null(0).to_numpy(zero_copy_only=False), self._salts[f.name])
        rows = to_rows(h, f.num_rows)
        if vals.null_count:
            rows[pc.is_null(vals).to_numpy(zero_copy_only=False)] = 0
        return rows

    @staticmethod
    def _as_value_type(f: FeatureSpec, vals: pa.Array) -> pa.Array:
        """Flat raw ids in the feature's value type, by the one id parser (`recsys_mtl.ids`)."""
        return string_ids(vals) if f.value_type == "string" else int_ids(vals)

    # ---- dense ----
    @staticmethod
    def _dense_raw(f: FeatureSpec, col: pa.Array) -> np.ndarray:
        """Finite float64 values after default-filling and the optional log."""
        t = col.type
        if not (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_null(t)
            or pa.types.is_boolean(t)
            or pa.types.is_decimal(t)
        ):
            raise TransformError(f.source, f"expected numbers, got {t}")
        # unsafe: an int64/uint64 beyond 2^53 loses precision as a float, which a dense value may
        x = col.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        x = np.where(np.isfinite(x), x, f.default)  # nulls arrive as NaN
        if f.log:
            x = np.sign(x) * np.log1p(np.abs(x))
        return x

    def _dense(self, f: FeatureSpec, col: pa.Array) -> np.ndarray:
        x = self._dense_raw(f, col)
        if f.stats is not None:
            x = (x - f.stats.mean) / f.stats.std
        if f.clip is not None:
            x = np.clip(x, -f.clip, f.clip)
        return x.astype(np.float32)

    # ---- vector ----
    def check_vectors(self, columns: Columns) -> None:
        """Raise the `TransformError` (with its `row`) the transform would raise on these rows' vector
        columns. The reader runs it on each row group as read, where a row index still points into
        the file (after the shuffle it would not)."""
        for f in self.vector_features:
            self.check_vector(f, _column(columns, f.source))

    def check_vector(self, f: FeatureSpec, col: pa.Array) -> None:
        """Raise the `TransformError` the transform would raise on vector feature `f`'s column (the
        server runs it on a request's column before queueing the request)."""
        with _naming(f):
            self._vector(f, col)

    @staticmethod
    def _vector(f: FeatureSpec, col: pa.Array) -> np.ndarray:
        """[rows, dense_width] float32: each row's vector (L2-normalised on request), then the missing
        indicator under `missing: zeros`. The one implementation of a vector's rules (the server
        checks requests with it before queueing them, the reader each row group as read): a list of
        `dim` numbers, no null inside, every value finite as a float32, no null vector under
        `missing: error`. Columnar; an error names the first row at fault, how many there are, and
        where it is inside the vector."""
        assert f.dim is not None
        d, n = f.dim, len(col)
        out = np.zeros((n, d), np.float32)
        t = col.type
        missing = (
            col.is_null().to_numpy(zero_copy_only=False) if not pa.types.is_null(t) else np.ones(n, bool)
        )
        present = np.flatnonzero(~missing)
        first = int(present[0]) if present.size else 0
        if not pa.types.is_null(t):
            if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)):
                raise TransformError(
                    f.source,
                    f"expected a vector of {d} numbers (a JSON list; in Arrow or Parquet a "
                    f"fixed_size_list<float32>[{d}]), "
                    f"got {value_kind(t, plural=False)} ({t})",
                    first,
                    present.size,
                )
            if pa.types.is_fixed_size_list(t) and t.list_size != d:
                raise TransformError(
                    f.source,
                    f"has {t.list_size} values, expected {d} (dim); the column is {t}",
                    first,
                    present.size,
                )
            vt = t.value_type
            if not (pa.types.is_integer(vt) or pa.types.is_floating(vt) or pa.types.is_null(vt)):
                lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
                i = int(np.argmax(lengths > 0)) if lengths.any() else first
                raise TransformError(
                    f.source,
                    f"expected a vector of {d} numbers, got a list of {value_kind(vt)}",
                    i,
                    present.size,
                )
            if not pa.types.is_fixed_size_list(t):
                ln = pc.list_value_length(col).fill_null(d).to_numpy(zero_copy_only=False)
                bad = np.flatnonzero(ln != d)
                if bad.size:
                    i = int(bad[0])
                    raise TransformError(
                        f.source, f"has {int(ln[i])} values, expected {d} (dim)", i, bad.size
                    )
            flat = pc.list_flatten(col)  # the present rows' values, `d` each, slicing accounted for
            if flat.null_count:
                at = np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))
                rows = np.unique(present[at // d])
                raise TransformError(
                    f.source,
                    f"value {int(at[0]) % d} of its vector is null; send null for the whole vector when it "
                    "is missing",
                    int(present[at[0] // d]),
                    rows.size,
                )
            x = flat.cast(pa.float64()).to_numpy(zero_copy_only=False)
            # finite as the float32 the model reads: 1e39 is finite in float64 but inf in the tensor
            ok = np.abs(x) <= np.finfo(np.float32).max  # NaN compares False
            if not ok.all():
                at = np.flatnonzero(~ok)
                rows = np.unique(present[at // d])
                k = int(at[0])
                raise TransformError(
                    f.source,
                    f"value {k % d} of its vector is {float(x[k])!r}: NaN, infinite or beyond the float32 "
                    "range (+-3.4e38)",
                    int(present[k // d]),
                    rows.size,
                )
            x = x.reshape(-1, d)
            if f.normalize == "l2":
                x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            out[present] = x
        if f.missing == "error":
            if missing.any():
                raise TransformError(
                    f.source,
                    f"no vector (null), and feature {f.name} has `missing: error`",
                    int(np.flatnonzero(missing)[0]),
                    int(missing.sum()),
                )
            return out
        return np.concatenate([out, missing[:, None].astype(np.float32)], axis=1)
