"""The Parquet reader: same tensors as the transform on the same rows, seedable shuffling, rank
splits, date ranges, and a clear error naming the file and column for every kind of bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys_mtl.partitions import DataError
from recsys_mtl.reader import ParquetReader
from recsys_mtl.targets import targets_from_table
from recsys_mtl.transform import FeatureTransform
from tests.conftest import write_days


def kjt_dict(fb) -> dict[str, tuple[list[int], list[int]]]:
    return {k: (jt.values().tolist(), jt.lengths().tolist()) for k, jt in fb.sparse.to_dict().items()}


def collect(reader: ParquetReader) -> pa.Table:
    return pa.concat_tables(list(reader.iter_tables()))


def test_reader_tensors_match_the_transform(recipe, raw_table, data_dir) -> None:
    reader = ParquetReader(recipe, data_dir, batch_size=300, shuffle_buffer=0)
    batches = list(reader)
    assert [b.num_rows for b in batches] == [300] * 6 + [200]
    t = FeatureTransform.from_recipe(recipe)
    offset = 0
    for b in batches:
        rows = raw_table.slice(offset, b.num_rows)  # no shuffle: storage order = table order
        want = t(rows)
        assert kjt_dict(b.features) == kjt_dict(want)
        assert torch.equal(b.features.dense, want.dense)
        tg = targets_from_table(recipe, rows)
        for name in tg.labels:
            assert torch.equal(b.targets.labels[name], tg.labels[name])
            assert torch.equal(b.targets.weights[name], tg.weights[name])
        offset += b.num_rows
    assert offset == raw_table.num_rows


def test_targets(recipe, raw_table) -> None:
    tg = targets_from_table(recipe, raw_table)
    click = raw_table.column("click").to_numpy()
    conv = raw_table.column("conversion").to_numpy()
    assert torch.equal(tg.labels["ctcvr"], torch.from_numpy((click * conv).astype(np.float32)))
    assert torch.equal(tg.eval_mask["cvr"], torch.from_numpy(click > 0))  # CVR evaluated on clicks
    assert tg.eval_mask["ctr"].all()
    w = raw_table.column("hazard_weight").to_numpy().copy()
    assert torch.allclose(tg.weights["hazard_short"], torch.from_numpy(w))
    assert tg.labels["hazard_long"].dtype == torch.int64


def ids(table: pa.Table) -> list[int]:
    return table.column("user_id").fill_null(-1).to_pylist()


def test_shuffle_is_seeded_complete_and_changes_per_epoch(recipe, raw_table, data_dir) -> None:
    def read(seed: int, epoch: int) -> list[int]:
        r = ParquetReader(recipe, data_dir, batch_size=128, shuffle_buffer=700, seed=seed)
        r.set_epoch(epoch)
        return ids(collect(r))

    a, b = read(1, 0), read(1, 0)
    assert a == b
    assert sorted(a) == sorted(ids(raw_table)) and a != ids(raw_table)
    assert read(1, 1) != a and read(2, 0) != a


def test_ranks_split_rows_disjointly(recipe, raw_table, data_dir) -> None:
    parts = [
        collect(ParquetReader(recipe, data_dir, batch_size=100, shuffle_buffer=0, rank=r, world_size=3))
        for r in range(3)
    ]
    assert sorted(i for p in parts for i in ids(p)) == sorted(ids(raw_table))
    sizes = [p.num_rows for p in parts]
    assert min(sizes) > 0 and max(sizes) - min(sizes) <= 256  # at most one row group apart
    reader = ParquetReader(recipe, data_dir, shuffle_buffer=0, rank=1, world_size=3)
    assert reader.num_rows == parts[1].num_rows


def test_date_range_and_extra_columns(recipe, raw_table, data_dir) -> None:
    r = ParquetReader(
        recipe, data_dir, start="2026-01-02", end="2026-01-02", shuffle_buffer=0, extra_columns=["oracle_ctr"]
    )
    assert [d.isoformat() for d in r.days] == ["2026-01-02"]
    t = collect(r)
    assert t.num_rows == 666  # np.array_split of 2000 rows into 6 files: 334, 334, 333, ...
    assert "oracle_ctr" in t.schema.names
    b = next(iter(r))
    assert b.extras["oracle_ctr"].shape == (b.num_rows,)
    # without asking, oracle columns are not even read
    assert "oracle_ctr" not in collect(ParquetReader(recipe, data_dir, shuffle_buffer=0)).schema.names
    with pytest.raises(DataError, match="no 'dt=YYYY-MM-DD' partitions between 2027-01-01"):
        ParquetReader(recipe, data_dir, start="2027-01-01")


def test_ignores_marker_files(recipe, data_dir) -> None:
    (data_dir / "dt=2026-01-01" / "_SUCCESS").write_text("")
    assert ParquetReader(recipe, data_dir, shuffle_buffer=0).num_rows == 2000


def corrupt(data_dir: Path, kind: str) -> tuple[Path, str | None]:
    """Break one file of day 2 in one way; return the file and the column the error must name."""
    f = data_dir / "dt=2026-01-02" / "part-00001.parquet"
    t = pq.read_table(f)
    if kind == "missing_column":
        pq.write_table(t.drop_columns(["campaign_id"]), f)
        return f, "campaign_id"
    if kind == "wrong_dtype":
        i = t.schema.get_field_index("bid_price")
        pq.write_table(t.set_column(i, "bid_price", pa.array(["cheap"] * t.num_rows)), f)
        return f, "bid_price"
    if kind == "wrong_list_dtype":
        i = t.schema.get_field_index("clicked_items")
        pq.write_table(t.set_column(i, "clicked_items", pa.array([1.5] * t.num_rows)), f)
        return f, "clicked_items"
    if kind == "zero_bytes":
        f.write_bytes(b"")
        return f, None
    if kind == "no_rows":
        pq.write_table(t.slice(0, 0), f)
        return f, None
    if kind == "all_null_label":
        i = t.schema.get_field_index("click")
        pq.write_table(t.set_column(i, "click", pa.nulls(t.num_rows, pa.int8())), f)
        return f, "click"
    if kind == "not_parquet":
        g = f.with_name("notes.csv")
        g.write_text("a,b\n1,2\n")
        return g, None
    raise AssertionError(kind)


BAD = {
    "missing_column": "missing column",
    "wrong_dtype": "wrong type string: expected numbers",
    "wrong_list_dtype": "wrong type double: expected lists of int ids",
    "zero_bytes": "empty file (0 bytes)",
    "no_rows": "file has no rows",
    "all_null_label": "label column is entirely null",
    "not_parquet": "not a readable Parquet file",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_partition_names_file_and_column(recipe, data_dir, kind) -> None:
    path, column = corrupt(data_dir, kind)
    with pytest.raises(DataError) as e:
        ParquetReader(recipe, data_dir)
    msg = str(e.value)
    assert str(path) in msg and BAD[kind] in msg, msg
    if column:
        assert f"column '{column}'" in msg
    # the other days are still usable on their own: nothing was changed by the failed read
    assert ParquetReader(recipe, data_dir, end="2026-01-01", shuffle_buffer=0).num_rows == 668


def test_few_row_groups_are_cut_into_row_ranges_for_ranks(recipe, tmp_path, raw_table) -> None:
    d = write_days(tmp_path / "d", raw_table.slice(0, 40), ["2026-01-01"], row_group_size=1000)
    parts = [collect(ParquetReader(recipe, d, shuffle_buffer=0, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for p in parts for i in ids(p)) == sorted(ids(raw_table.slice(0, 40)))
    assert all(p.num_rows > 0 for p in parts)
    one = tmp_path / "e" / "dt=2026-01-01"
    one.mkdir(parents=True)
    pq.write_table(raw_table.slice(0, 1), one / "part-0.parquet")
    with pytest.raises(DataError, match="1 rows cannot be split over 2 ranks"):
        ParquetReader(recipe, tmp_path / "e", world_size=2)


def test_shuffled_batches_match_the_transform_of_their_rows(recipe, data_dir) -> None:
    # Batches are cut from a transformed window (FeatureBatch.slice_rows): each must equal the
    # transform applied to exactly its own raw rows, across window boundaries too.
    reader = ParquetReader(recipe, data_dir, batch_size=128, shuffle_buffer=500, seed=3)
    t = FeatureTransform.from_recipe(recipe)
    pairs = list(zip(reader, reader.iter_tables(), strict=True))
    assert len(pairs) == 16
    for batch, rows in pairs:
        want = t(rows)
        assert kjt_dict(batch.features) == kjt_dict(want)
        assert torch.equal(batch.features.dense, want.dense)
        assert torch.equal(batch.targets.labels["ctr"], targets_from_table(recipe, rows).labels["ctr"])


def test_train_on_restricts_the_loss_rows(recipe, raw_table) -> None:
    from recsys_mtl.recipe import recipe_from_dict

    d = recipe.to_dict()
    cvr = next(t for t in d["tasks"] if t["name"] == "cvr")
    cvr.update(train_on="click", loss_weight=1.0)
    tg = targets_from_table(recipe_from_dict(d), raw_table)
    click = raw_table.column("click").to_numpy() > 0
    assert torch.equal(tg.weights["cvr"] > 0, torch.from_numpy(click))


def test_iter_batches_skip_resumes_the_same_stream(recipe, data_dir) -> None:
    reader = ParquetReader(recipe, data_dir, batch_size=128, shuffle_buffer=500, seed=3)
    reader.set_epoch(2)
    full = [ids_of(b) for b in reader.iter_batches()]
    for skip in (0, 3, 4, 9, 15):
        assert [ids_of(b) for b in reader.iter_batches(skip=skip)] == full[skip:]


def ids_of(batch) -> list[int]:
    return batch.features.sparse["user_id"].values().tolist()


def test_label_cutoff_censors_what_was_not_yet_known(recipe) -> None:
    import datetime as dt

    from recsys_mtl.targets import DAY_COLUMN

    # subjects from days 0, 5 and 9 of a window; cutoff at the end of day 9
    day0 = (dt.date(2026, 1, 1) - dt.date(1970, 1, 1)).days
    t = pa.table(
        {
            "click": [1, 1, 1, 1],
            "conversion": [0, 0, 0, 0],
            "hazard_weight": [1.0, 1.0, 1.0, 1.0],
            "hazard_short_interval": [12, 3, 0, 2],
            "hazard_short_event": [1, 1, 1, 0],
            "hazard_long_interval": [1, 0, 0, 0],
            "hazard_long_event": [1, 1, 1, 0],
            DAY_COLUMN: pa.array([day0, day0 + 5, day0 + 9, day0 + 9], pa.int32()),
        }
    )
    tg = targets_from_table(recipe, t, label_cutoff=dt.date(2026, 1, 10))
    # day 0: 10 days observed -> short interval 12 (day 13) unknown: censored in interval 9
    # day 5: 5 days observed -> stop in interval 3 (day 4) is known
    # day 9: 1 day observed -> a stop in interval 0 is known; interval 2 is not: censored in 0
    assert tg.labels["hazard_short"].tolist() == [9, 3, 0, 0]
    assert tg.events["hazard_short"].tolist() == [0.0, 1.0, 1.0, 0.0]
    # weekly grid: day 0 saw 1 full week (stop in week 2 unknown); days 5 and 9 saw none: dropped
    assert tg.labels["hazard_long"].tolist()[0] == 0 and tg.events["hazard_long"].tolist()[0] == 0.0
    assert tg.weights["hazard_long"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert tg.weights["hazard_short"].tolist() == [1.0, 1.0, 1.0, 1.0]
    # without a cutoff, labels are taken as given
    assert targets_from_table(recipe, t).labels["hazard_short"].tolist() == [12, 3, 0, 2]
