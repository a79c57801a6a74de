"""Batch predictions: score day partitions of Parquet with an exported model, write per-row scores.

    from recsys_mtl.batch_predict import PredictOptions, model_from_registry, predict
    model = model_from_registry("registry", "ads_ranker")            # or model_from_run("runs/home")
    days = predict(model, "data", "scores", start="2026-01-07", options=PredictOptions(survival=True))

The rows are scored by `LoadedModel.score`, the server's own path (feature transform, the exported
TorchScript artifact, postprocessing), so an offline score and a served score of the same row are
the same number. A run is scored through the same path too (`model_from_run`): it is exported with
`recsys_mtl.export.export_run` into a throw-away registry and loaded back with `load_model`, so
whatever the export puts into the artifact (e.g. calibration) is what batch predictions apply.

Output (`predict`), one row per input row, in the input's order (files of a day in name order, rows
in file order):

    OUT/<partition>=YYYY-MM-DD/part-0.parquet   a directory: one file per day (the default), or
    OUT.parquet                                 one file for every day (OUT ends in .parquet), with
                                                the day as a date32 column named by the partition key

Columns: the kept columns (copied unchanged: ids, labels), then per task in the model's order:
`<task>` (binary: probability), `<task>_risk` (hazard: 1 - S at the grid's horizon), and on request
`<task>_hazard` / `<task>_survival` (hazard: list<float32> of the L intervals' hazards / S(t_k)).
Scores are float32.

Memory stays bounded by `batch_size` whatever the number of days or rows: each file is read with
`ParquetFile.iter_batches` (only the model's input and the kept columns), each batch is scored and
written as its own row group by a `ParquetWriter`, then dropped. A day's file is written under a
temporary name and renamed when complete (`recsys_mtl.atomic_files.atomic_path`): a reader sees a
whole day or none, and a crash leaves no half file under the final name.

Before anything is read, every file's footer is checked: a missing input column or kept column is a
`DataError` naming the file and the column; an unknown task is a ValueError naming the known ones.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_mtl.atomic_files import atomic_path
from recsys_mtl.loader import LoadedModel, TaskInfo, load_model
from recsys_mtl.partitions import DataError, list_partitions

log = logging.getLogger("recsys_mtl.batch_predict")

DEFAULT_BATCH_SIZE = 65_536
OUTPUT_FILE = "part-0.parquet"
# the name `model_from_run` publishes under in its throw-away registry
_RUN_MODEL_NAME = "run"


@dataclass(frozen=True)
class PredictOptions:
    """What to write (see the module docstring for the columns)."""

    tasks: Sequence[str] | None = None  # None: every task of the model
    hazards: bool = False  # add `<task>_hazard` per hazard task
    survival: bool = False  # add `<task>_survival` per hazard task
    # Columns copied through. None: the recipe's user and item columns, those the data has.
    keep: Sequence[str] | None = None
    batch_size: int = DEFAULT_BATCH_SIZE


@dataclass
class DayPrediction:
    """What was written for one day."""

    day: dt.date
    rows: int
    batches: int  # batches read and scored (each one row group of the output)
    max_batch_rows: int  # the largest batch: <= batch_size, whatever the size of the day
    seconds: float
    path: Path
    files: list[Path] = field(default_factory=list)  # the input files, in the order read

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


def model_from_registry(
    registry: str | Path, name: str, version: str | int = "current", *, int8: bool = False
) -> LoadedModel:
    """A registry version exactly as the server loads it (checksum verified), validated on the
    manifest's golden rows."""
    model = load_model(registry, name, version, int8=int8)
    model.validate()
    return model


def model_from_run(run_dir: str | Path, *, int8: bool = False) -> LoadedModel:
    """A training run as it would be served: exported with `export_run` (scripting, parity check
    against the eager model, manifest, and anything else the export puts into the artifact) into a
    temporary registry, loaded back with `load_model` and validated. The temporary registry is
    removed once the artifact's bytes are loaded; nothing is written beside the run."""
    from recsys_mtl.export import export_run  # training-side code: only when scoring a run

    export_log = logging.getLogger("recsys_mtl.export")
    level = export_log.level
    with tempfile.TemporaryDirectory(prefix="recsys-mtl-predict-") as tmp:
        # the export's "exported run/1" line would suggest a registry version that does not last
        export_log.setLevel(logging.WARNING)
        try:
            res = export_run(run_dir, tmp, _RUN_MODEL_NAME, int8=int8)
        finally:
            export_log.setLevel(level)
        model = load_model(tmp, _RUN_MODEL_NAME, res.version, int8=int8)
    model.validate()
    model.name, model.version = Path(run_dir).resolve().name, "run"
    log.info("scripted run %s (max |diff| vs eager %.2g)", run_dir, res.max_abs_diff)
    return model


# ---------------------------------------------------------------------------------------------
# the plan: which columns are read and written
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    tasks: list[TaskInfo]
    read: list[str]  # columns read from each file: model inputs, then kept ones
    keep: list[str]
    schema: pa.Schema  # of every output file
    day_column: str | None  # single-file output: the partition key as a date32 column
    hazards: bool
    survival: bool


_F32 = pa.float32()
_LIST_F32 = pa.list_(pa.float32())


def output_columns(
    tasks: Sequence[TaskInfo], *, hazards: bool, survival: bool
) -> list[tuple[str, pa.DataType]]:
    """The score columns of `tasks`, in order, with their types."""
    cols: list[tuple[str, pa.DataType]] = []
    for t in tasks:
        if t.kind == "hazard":
            cols.append((f"{t.name}_risk", _F32))
            if hazards:
                cols.append((f"{t.name}_hazard", _LIST_F32))
            if survival:
                cols.append((f"{t.name}_survival", _LIST_F32))
        else:
            cols.append((t.name, _F32))
    return cols


def _recipe_id_columns(model: LoadedModel) -> list[str]:
    data = (model.manifest.get("recipe") or {}).get("data") or {}
    return list(dict.fromkeys(c for c in (data.get("user_column"), data.get("item_column")) if c))


def partition_key(model: LoadedModel) -> str:
    """The recipe's partition key (`data.partition`, default dt)."""
    data = (model.manifest.get("recipe") or {}).get("data") or {}
    return str(data.get("partition") or "dt")


def _plan(
    model: LoadedModel, days: dict[dt.date, list[Path]], options: PredictOptions, day_column: str | None
) -> _Plan:
    tasks = model.wanted(options.tasks)  # ValueError naming the known tasks
    inputs = model.input_columns
    schemas: dict[Path, pa.Schema] = {}
    for files in days.values():
        for f in files:
            try:
                schemas[f] = pq.ParquetFile(f).schema_arrow
            except (pa.ArrowInvalid, OSError) as e:
                raise DataError(f"not a readable Parquet file ({e})", f) from None
    if not schemas:
        raise DataError("no data files in the selected days")
    for f, s in schemas.items():  # inputs first: a missing feature is the likelier mistake
        for c in inputs:
            if c not in s.names:
                raise DataError("missing column (the model reads it as a feature)", f, c)
    if options.keep is None:  # the recipe's ids, where every file has them
        keep = [c for c in _recipe_id_columns(model) if all(c in s.names for s in schemas.values())]
    else:
        keep = list(dict.fromkeys(options.keep))
        for f, s in schemas.items():
            for c in keep:
                if c not in s.names:
                    raise DataError("missing column (asked for with --keep)", f, c)
    scores = output_columns(tasks, hazards=options.hazards, survival=options.survival)
    first = next(iter(schemas.values()))
    fields = [pa.field(day_column, pa.date32())] if day_column else []
    fields += [first.field(c) for c in keep]
    fields += [pa.field(n, t) for n, t in scores]
    names = [f.name for f in fields]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"output column(s) {dup} would appear twice: a kept column has a score's name")
    return _Plan(
        tasks=tasks,
        read=list(dict.fromkeys([*inputs, *keep])),
        keep=keep,
        schema=pa.schema(fields),
        day_column=day_column,
        hazards=options.hazards,
        survival=options.survival,
    )


# ---------------------------------------------------------------------------------------------
# reading, scoring, writing
# ---------------------------------------------------------------------------------------------


def iter_day_batches(
    files: Sequence[Path], columns: Sequence[str], batch_size: int
) -> Iterator[pa.RecordBatch]:
    """The rows of `files` in order, as record batches of at most `batch_size` rows (never a whole
    file or day at once); empty batches are skipped."""
    for f in files:
        try:
            pf = pq.ParquetFile(f)
            for b in pf.iter_batches(batch_size=batch_size, columns=list(columns), use_threads=False):
                if b.num_rows:
                    yield b
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"cannot read ({e})", f) from None


def _list_column(values: np.ndarray) -> pa.Array:
    """[N, L] floats -> list<float32> with L values per row."""
    n, width = values.shape
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1).astype(np.float32, copy=False)))


def score_batch(
    model: LoadedModel, batch: pa.RecordBatch, plan: _Plan, day: dt.date | None = None
) -> pa.RecordBatch:
    """One batch of raw rows -> its output rows (kept columns, then scores; see `output_columns`)."""
    scores = model.score(batch, [t.name for t in plan.tasks])
    n = batch.num_rows
    cols: list[pa.Array] = []
    if plan.day_column:
        cols.append(pa.array(np.full(n, np.datetime64(day, "D")), pa.date32()))
    for c in plan.keep:
        cols.append(batch.column(c).cast(plan.schema.field(c).type))
    for t in plan.tasks:
        if t.kind == "hazard":
            cols.append(pa.array(scores[f"{t.name}_risk"].astype(np.float32, copy=False)))
            if plan.hazards:
                cols.append(_list_column(scores[t.name]))
            if plan.survival:
                cols.append(_list_column(scores[f"{t.name}_survival"]))
        else:
            cols.append(pa.array(scores[t.name].astype(np.float32, copy=False)))
    out = pa.RecordBatch.from_arrays(cols, schema=plan.schema)
    if out.num_rows != n:  # pragma: no cover - a model that drops rows is a bug, never silent
        raise RuntimeError(f"scored {out.num_rows} rows for a batch of {n}")
    return out


def _write_day(
    model: LoadedModel,
    writer: pq.ParquetWriter,
    day: dt.date,
    files: Sequence[Path],
    plan: _Plan,
    batch_size: int,
) -> tuple[int, int, int]:
    rows = batches = biggest = 0
    for b in iter_day_batches(files, plan.read, batch_size):
        writer.write_batch(score_batch(model, b, plan, day))
        rows += b.num_rows
        batches += 1
        biggest = max(biggest, b.num_rows)
    return rows, batches, biggest


def predict(
    model: LoadedModel,
    data_dir: str | Path,
    out: str | Path,
    *,
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
    options: PredictOptions | None = None,
    on_day: Callable[[DayPrediction], None] | None = None,
) -> list[DayPrediction]:
    """Score every row of the days in [start, end] of `data_dir` and write the scores to `out`.

    Args:
        model: a LoadedModel (`model_from_registry`, `model_from_run`, or `load_model`).
        data_dir: `DATA/<partition>=YYYY-MM-DD/*.parquet` (the recipe's partition key).
        out: a directory (one `<partition>=DAY/part-0.parquet` per day, each replaced atomically
            as it completes) or a path ending in `.parquet` (one file, all days, with the day as a
            column; replaced atomically at the end).
        options: tasks, extra hazard columns, kept columns, batch size.
        on_day: called after each day is written (progress; the CLI logs it).

    Returns:
        One DayPrediction per day, in day order.

    Raises:
        DataError: no partitions in the range, an unreadable file, or a missing column (named with
            its file); ValueError: an unknown task or batch size below 1.
    """
    options = options or PredictOptions()
    if options.batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {options.batch_size}")
    key = partition_key(model)
    days = list_partitions(data_dir, start, end, key)
    out = Path(out)
    single = out.suffix == ".parquet"
    plan = _plan(model, days, options, key if single else None)
    results: list[DayPrediction] = []

    def done(day: dt.date, files: list[Path], counts: tuple[int, int, int], t0: float, path: Path) -> None:
        r = DayPrediction(day, *counts, seconds=time.perf_counter() - t0, path=path, files=files)
        results.append(r)
        log.info(
            "%s=%s: %s rows in %d batches, %.1fs (%s rows/s) -> %s",
            key,
            day,
            f"{r.rows:,}",
            r.batches,
            r.seconds,
            f"{r.rows_per_s:,.0f}",
            path,
        )
        if on_day is not None:
            on_day(r)

    if single:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp, pq.ParquetWriter(tmp, plan.schema, compression="zstd") as w:
            for day, files in days.items():
                t0 = time.perf_counter()
                done(day, files, _write_day(model, w, day, files, plan, options.batch_size), t0, out)
        return results
    for day, files in days.items():
        t0 = time.perf_counter()
        d = out / f"{key}={day.isoformat()}"
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / OUTPUT_FILE) as tmp, pq.ParquetWriter(tmp, plan.schema, compression="zstd") as w:
            counts = _write_day(model, w, day, files, plan, options.batch_size)
        done(day, files, counts, t0, d / OUTPUT_FILE)
    return results
