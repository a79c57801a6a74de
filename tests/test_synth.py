"""The synthetic data generator: layout, schema, determinism, label semantics, ground truth, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from recsys_mtl.cli import main
from recsys_mtl.metrics import c_index
from recsys_mtl.synth import SCHEMA, Lifetimes, OutputExistsError, SynthConfig, World, ctr_weights, generate
from recsys_mtl.synth.lifetimes import HazardParams, daily_hazard, draw_lifetimes, grid_labels
from recsys_mtl.synth.world import SUBJECT_DAY_STRIDE, build_world, world_rng

# Small enough to generate in well under a second, with several chunks per day (7,000 rows) and
# part files (6,000 rows) that do not line up with the chunks.
SMALL = SynthConfig(
    rows=30_000,
    days=3,
    seed=7,
    users=2_000,
    creatives=800,
    advertisers=40,
    campaigns=120,
    chunk_rows=7_000,
    rows_per_file=6_000,
    label_follow_up_days=0.0,  # censored at the window end: the residual-time checks below are exact
)


def _read(root: Path) -> pa.Table:
    return ds.dataset(root, format="parquet", partitioning="hive").to_table()


def _files(root: Path) -> list[Path]:
    return sorted(root.glob("dt=*/part-*.parquet"))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(SMALL, out, progress=False)
    return out, _read(out)


def _logit(p: np.ndarray) -> np.ndarray:
    p = p.astype(np.float64)
    return np.log(p / (1.0 - p))


# --------------------------------------------------------------------------------------------
# layout, schema, determinism
# --------------------------------------------------------------------------------------------


def test_partition_layout_and_exact_schema(small: tuple[Path, pa.Table]) -> None:
    out, table = small
    assert sorted(p.name for p in out.iterdir()) == [
        "_synth.json",
        "dt=2026-01-01",
        "dt=2026-01-02",
        "dt=2026-01-03",
    ]
    for day_dir in sorted(out.glob("dt=*")):
        files = sorted(day_dir.iterdir())
        assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
        assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 10_000  # rows split evenly
        assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [6_000, 4_000]
        for f in files:
            assert pq.read_schema(f).equals(SCHEMA, check_metadata=False)
    assert table.num_rows == SMALL.rows
    meta = json.loads((out / "_synth.json").read_text())
    assert meta["config"]["seed"] == SMALL.seed and meta["stats"]["rows"] == SMALL.rows


def test_schema_names_and_types() -> None:
    types = {f.name: str(f.type) for f in SCHEMA}
    assert types["user_id"] == "int64" and types["user_activity"] == "float"
    assert types["clicked_items"] == "list<item: int64>" and types["format"] == "string"
    assert types["click"] == "int8" and types["hazard_short_interval"] == "int16"
    assert types["oracle_hazard_long"] == "list<item: float>"
    assert types["hazard_weight"] == "float" and types["hazard_subject"] == "int64"


def test_same_seed_same_bytes_other_seed_other_data(small: tuple[Path, pa.Table], tmp_path: Path) -> None:
    out, table = small
    again = tmp_path / "again"
    generate(SMALL, again, progress=False)
    first, second = _files(out), _files(again)
    assert [f.relative_to(out) for f in first] == [f.relative_to(again) for f in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert (out / "_synth.json").read_bytes() == (again / "_synth.json").read_bytes()

    other = tmp_path / "other"
    generate(dataclasses.replace(SMALL, seed=8), other, progress=False)
    assert not _read(other).equals(table)


def test_file_size_does_not_change_the_data(small: tuple[Path, pa.Table], tmp_path: Path) -> None:
    _, table = small
    out = tmp_path / "big-files"
    generate(dataclasses.replace(SMALL, rows_per_file=1_000_000), out, progress=False)
    assert len(_files(out)) == SMALL.days
    assert _read(out).equals(table)


# --------------------------------------------------------------------------------------------
# labels and ground truth
# --------------------------------------------------------------------------------------------


def test_labels_and_oracles_are_consistent(small: tuple[Path, pa.Table]) -> None:
    _, t = small
    click, conv = t["click"].to_numpy(), t["conversion"].to_numpy()
    assert set(np.unique(click)) <= {0, 1} and set(np.unique(conv)) <= {0, 1}
    assert not conv[click == 0].any()
    ctr, cvr, ctcvr = (t[c].to_numpy() for c in ("oracle_ctr", "oracle_cvr", "oracle_ctcvr"))
    for p in (ctr, cvr, ctcvr):
        assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(ctcvr, ctr.astype(np.float64) * cvr, rtol=1e-6)
    for grid, n, risk in (("short", 14, "oracle_risk_short"), ("long", 16, "oracle_risk_long")):
        h = np.stack(t[f"oracle_hazard_{grid}"].to_numpy(zero_copy_only=False)).astype(np.float64)
        assert h.shape == (t.num_rows, n) and np.all((h >= 0) & (h <= 1))
        np.testing.assert_allclose(t[risk].to_numpy(), 1.0 - np.prod(1.0 - h, axis=1), atol=1e-5)
        interval = t[f"hazard_{grid}_interval"].to_numpy()
        assert interval.min() >= 0 and interval.max() <= n - 1
        assert set(np.unique(t[f"hazard_{grid}_event"].to_numpy())) <= {0, 1}
    assert t["hazard_short_event"].to_numpy().any() and t["hazard_long_event"].to_numpy().any()


def test_feature_ranges(small: tuple[Path, pa.Table]) -> None:
    _, t = small
    assert pc.min(t["user_age_bucket"]).as_py() >= 0 and pc.max(t["user_age_bucket"]).as_py() <= 7
    assert pc.max(t["user_gender"]).as_py() <= 2 and pc.max(t["position"]).as_py() <= 9
    assert pc.max(t["hour"]).as_py() <= 23 and pc.min(t["hour"]).as_py() >= 0
    assert set(pc.unique(t["format"]).to_pylist()) <= {"image", "video", "carousel", "text"}
    assert set(pc.unique(t["device"]).to_pylist()) == {"ios", "android", "web"}
    assert 0.002 < t["user_activity"].null_count / t.num_rows < 0.03  # ~1% missing
    assert pc.min(t["creative_age_days"]).as_py() >= 0 and pc.min(t["bid_price"]).as_py() > 0
    assert pc.max(t["creative_id"]).as_py() < SMALL.creatives


def test_creative_statistics_come_from_earlier_days_only(small: tuple[Path, pa.Table]) -> None:
    """Each row's creative_daily_impressions / creative_ctr_to_date equal a brute-force count over the
    creative's rows on the days before the row's (no look-ahead), and carry what the true hazard
    depends on: a heavily shown or low-CTR creative is riskier."""
    _, t = small
    day = _day_index(t)
    creative, click = t["creative_id"].to_numpy(), t["click"].to_numpy().astype(np.float64)
    imps, ctr = t["creative_daily_impressions"].to_numpy(), t["creative_ctr_to_date"].to_numpy()
    n = SMALL.creatives
    days = range(SMALL.days)
    per_day = np.stack([np.bincount(creative[day == d], minlength=n) for d in days])
    clicks = np.stack([np.bincount(creative[day == d], click[day == d], minlength=n) for d in days])
    for d in range(SMALL.days):
        seen, shown = per_day[:d].sum(0), (per_day[:d] > 0).sum(0)
        want_imps = np.where(shown > 0, seen / np.maximum(shown, 1), 0.0)
        want_ctr = (clicks[:d].sum(0) + 100.0 * SMALL.ctr) / (seen + 100.0)
        rows = day == d
        np.testing.assert_allclose(imps[rows], want_imps[creative[rows]], rtol=1e-6)
        np.testing.assert_allclose(ctr[rows], want_ctr[creative[rows]], rtol=1e-6)
    assert not imps[day == 0].any() and np.allclose(ctr[day == 0], SMALL.ctr)  # no history yet
    last = day == SMALL.days - 1
    risk = t["oracle_risk_short"].to_numpy()[last]
    assert spearmanr(imps[last], risk).statistic > 0.3
    assert spearmanr(ctr[last], risk).statistic < -0.2


def test_oracle_ctr_is_informative_and_calibrated(small: tuple[Path, pa.Table]) -> None:
    _, t = small
    click, ctr = t["click"].to_numpy(), t["oracle_ctr"].to_numpy()
    assert roc_auc_score(click, ctr) > 0.68
    assert 0.03 < click.mean() < 0.08
    # the clicks are Bernoulli(oracle_ctr): their mean is within a few standard errors
    se = np.sqrt((ctr * (1 - ctr)).sum()) / len(ctr)
    assert abs(click.mean() - ctr.mean()) < 4 * se
    clicked = click == 1
    conv, cvr = t["conversion"].to_numpy()[clicked], t["oracle_cvr"].to_numpy()[clicked]
    assert conv.sum() > 10 and roc_auc_score(conv, cvr) > 0.6


def test_conversion_rate_knob(tmp_path: Path) -> None:
    cfg = dataclasses.replace(SMALL, rows=6_000, conversion_rate=0.01)
    generate(cfg, tmp_path / "rare", progress=False)
    t = _read(tmp_path / "rare")
    clicked = t["click"].to_numpy() == 1
    assert abs(t["oracle_cvr"].to_numpy()[clicked].mean() - 0.01) < 0.004


def test_rho_sets_task_relatedness(tmp_path: Path) -> None:
    corr = {}
    for rho in (0.9, -0.5):
        out = tmp_path / f"rho{rho}"
        generate(dataclasses.replace(SMALL, rows=6_000, rho=rho), out, progress=False)
        t = _read(out)
        corr[rho] = np.corrcoef(_logit(t["oracle_ctr"].to_numpy()), _logit(t["oracle_cvr"].to_numpy()))[0, 1]
    assert corr[0.9] > 0.4 and corr[-0.5] < 0.0 and corr[0.9] > corr[-0.5]


def test_sequences(tmp_path: Path) -> None:
    cfg = dataclasses.replace(SMALL, rows=6_000, click_seq_len=7, conv_seq_len=3)
    generate(cfg, tmp_path / "seq", progress=False)
    t = _read(tmp_path / "seq")
    for col, max_len in (("clicked_items", 7), ("converted_items", 3)):
        lengths = pc.list_value_length(t[col]).to_numpy()
        assert lengths.min() >= 0 and lengths.max() == max_len and (lengths == 0).any()
        items = pc.list_flatten(t[col]).to_numpy()
        assert items.min() >= 0 and items.max() < cfg.creatives
    # a user's history is the same on all their rows of a day
    day = t.filter(pc.equal(t["dt"], pa.scalar(t["dt"][0].as_py())))
    users = day["user_id"].to_numpy()
    top = np.bincount(users).argmax()
    rows = day.filter(pc.equal(day["user_id"], top))["clicked_items"].to_pylist()
    assert len(rows) > 1 and all(r == rows[0] for r in rows)


def test_sequences_carry_the_users_taste(small: tuple[Path, pa.Table]) -> None:
    """Clicked items' categories concentrate on few categories per user (their affinities)."""
    _, t = small
    from recsys_mtl.synth import build_world

    world = build_world(SMALL)
    first = t.slice(0, 2_000)["clicked_items"].to_pylist()
    shares = []
    for items in first:
        if len(items) >= 10:
            cats = world.creative_category[np.array(items)]
            shares.append(np.bincount(cats).max() / len(cats))
    # by popularity alone the top category of 10+ draws would hold far less
    all_cats = world.creative_category[pc.list_flatten(t["clicked_items"]).to_numpy()]
    rng = np.random.default_rng(0)
    shuffled = [np.bincount(rng.choice(all_cats, 15)).max() / 15 for _ in range(500)]
    assert np.mean(shares) > np.mean(shuffled) + 0.1


def _subjects(t: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row order grouping each subject's rows together, start of each subject in it, subject ids)."""
    subject = t["hazard_subject"].to_numpy()
    order = np.argsort(subject, kind="stable")
    ids, starts = np.unique(subject[order], return_index=True)
    return order, starts, ids


def _day_index(t: pa.Table) -> np.ndarray:
    dates = np.array(t["dt"].to_pylist(), dtype="datetime64[D]")
    return (dates - np.datetime64(SMALL.start_date)).astype(np.int64)


def _small_lifetimes() -> tuple[World, Lifetimes]:
    """The world and lifetimes `generate(SMALL)` draws (calibration leaves both unchanged)."""
    world = build_world(SMALL)
    life = draw_lifetimes(
        world.creative_quality,
        world.creative_exposure,
        world.creative_launch,
        float(SMALL.days) + SMALL.label_follow_up_days,
        HazardParams.from_config(SMALL),
        world_rng(SMALL.seed, 6),
    )
    return world, life


def test_hazard_labels_per_subject_and_weights(small: tuple[Path, pa.Table]) -> None:
    _, t = small
    creative, day = t["creative_id"].to_numpy(), _day_index(t)
    subject = t["hazard_subject"].to_numpy()
    np.testing.assert_array_equal(subject, creative * SUBJECT_DAY_STRIDE + day)
    order, starts, ids = _subjects(t)
    assert len(np.unique(creative)) < len(ids)  # creatives shown on several days: several subjects
    for col in (
        "hazard_short_interval",
        "hazard_short_event",
        "hazard_long_interval",
        "hazard_long_event",
        "oracle_risk_short",
        "oracle_risk_long",
        "hazard_weight",
    ):
        v = t[col].to_numpy()[order].astype(np.float64)
        assert np.array_equal(np.minimum.reduceat(v, starts), np.maximum.reduceat(v, starts)), col
    # weights: a subject's rows sum to smoothed_ctr_i / mean smoothed ctr of its creative i (empirical
    # Bayes over the creative's impressions and clicks on all days, alpha): each subject counts once
    click = t["click"].to_numpy()
    shown = np.unique(creative)
    impressions = np.bincount(creative).astype(np.float64)
    clicks = np.bincount(creative, weights=click)
    alpha, global_ctr = SMALL.hazard_weight_alpha, click.mean()
    smoothed = (clicks + alpha * global_ctr) / (impressions + alpha)
    relative = smoothed / smoothed[shown].mean()
    w = t["hazard_weight"].to_numpy().astype(np.float64)[order]
    weight_sum = np.add.reduceat(w, starts)
    np.testing.assert_allclose(weight_sum, relative[ids // SUBJECT_DAY_STRIDE], rtol=1e-5)
    assert np.all(weight_sum > 0)


def test_residual_lifetime_labels(small: tuple[Path, pa.Table]) -> None:
    """A subject is a creative on a day, labelled from that day's start: the same creative's subjects
    on later days have a residual time one day shorter per day, until the event or censoring."""
    _, t = small
    order, starts, ids = _subjects(t)
    first = order[starts]
    creative, day = ids // SUBJECT_DAY_STRIDE, ids % SUBJECT_DAY_STRIDE
    k = t["hazard_short_interval"].to_numpy()[first].astype(np.int64)
    d = t["hazard_short_event"].to_numpy()[first]
    # residual times are whole days within the window: r = k + 1 <= days - day on the daily grid,
    # censored exactly at the window end
    assert np.all(k + 1 <= SMALL.days - day)
    assert np.all((d == 1) | (k + 1 == SMALL.days - day))
    # the long grid's first week holds the whole 3-day window
    assert not t["hazard_long_interval"].to_numpy().any()
    np.testing.assert_array_equal(t["hazard_long_event"].to_numpy()[first], d)
    # subjects of one creative: day + r (the stop or the window end) is the creative's, and the
    # creative has no rows after a stop
    end = day + k + 1
    for c in np.unique(creative):
        mine = creative == c
        assert len(np.unique(end[mine])) == 1 and len(np.unique(d[mine])) == 1, c
        assert day[mine].max() < end[mine][0]
    # against the true lifetimes: rows only while running at the start of the day (T > a0), at an
    # age a0 + time of day, and r = min(T, C) - a0
    world, life = _small_lifetimes()
    launch = world.creative_launch
    assert np.array_equal(launch, np.floor(launch))  # whole-day launches
    a0 = day - launch[creative]
    assert np.all(a0 >= 0) and np.all(life.lifetime[creative] > a0)
    np.testing.assert_array_equal(k + 1, np.minimum(life.lifetime, life.censor)[creative] - a0)
    np.testing.assert_array_equal(d, life.event[creative])
    row_a0 = _day_index(t) - launch[t["creative_id"].to_numpy()]
    age = t["creative_age_days"].to_numpy().astype(np.float64)
    assert np.all((age >= row_a0 - 1e-4) & (age < row_a0 + 1 + 1e-4))


def test_oracle_is_the_hazard_from_the_subjects_origin(small: tuple[Path, pa.Table]) -> None:
    """A subject's oracle is its creative's daily hazard shifted by its origin age a0."""
    _, t = small
    order, starts, ids = _subjects(t)
    first = order[starts]
    creative, day = ids // SUBJECT_DAY_STRIDE, ids % SUBJECT_DAY_STRIDE
    world, _ = _small_lifetimes()
    a0 = day - world.creative_launch[creative]
    assert len(np.unique(a0)) > 20  # origins at many ages
    short = np.stack(t["oracle_hazard_short"].to_numpy(zero_copy_only=False)[first]).astype(np.float64)
    long = np.stack(t["oracle_hazard_long"].to_numpy(zero_copy_only=False)[first]).astype(np.float64)
    params = HazardParams.from_config(SMALL)
    for s in np.linspace(0, len(ids) - 1, 40).astype(int):
        c = creative[s : s + 1]
        h = daily_hazard(world.creative_quality[c], world.creative_exposure[c], np.arange(1, 300), params)[0]
        h = h.astype(np.float64)[int(a0[s]) :]  # h[j] = hazard at age a0 + j + 1
        np.testing.assert_allclose(short[s], h[:14], rtol=1e-5)
        weekly = 1.0 - np.prod(1.0 - h[:112].reshape(16, 7), axis=1)
        np.testing.assert_allclose(long[s], weekly, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        t["oracle_risk_short"].to_numpy()[first], 1.0 - np.prod(1.0 - short, axis=1), atol=1e-5
    )
    np.testing.assert_allclose(
        t["oracle_risk_long"].to_numpy()[first], 1.0 - np.prod(1.0 - long, axis=1), atol=1e-5
    )
    # the same creative on a later day: the same hazard curve, one day further along it
    later = np.flatnonzero((creative[1:] == creative[:-1]) & (day[1:] == day[:-1] + 1))
    assert len(later)
    np.testing.assert_allclose(short[later + 1, :13], short[later, 1:], rtol=1e-6)


def test_age_alone_no_longer_gives_the_label_away(tmp_path: Path) -> None:
    """Labelled from launch, a row's creative_age_days (it has survived that long) ranked creatives
    better than the oracle (C-index 0.98 / 1.00 vs 0.93 / 0.83). Labelled from each subject's
    origin, age alone ranks subjects far below the oracle on both grids (21 days: the long grid has
    more than one interval)."""
    cfg = SynthConfig(rows=60_000, days=21, seed=0)
    generate(cfg, tmp_path / "d", progress=False)
    t = _read(tmp_path / "d")
    subject = t["hazard_subject"].to_numpy()
    _, first, inverse = np.unique(subject, return_index=True, return_inverse=True)
    age = np.bincount(inverse, weights=t["creative_age_days"].to_numpy().astype(np.float64))
    age /= np.bincount(inverse)
    for grid in ("short", "long"):
        k = t[f"hazard_{grid}_interval"].to_numpy()[first]
        d = t[f"hazard_{grid}_event"].to_numpy()[first]
        assert len(np.unique(k[d == 1])) > 1 and d.sum() > 500
        oracle = c_index(k, d, t[f"oracle_risk_{grid}"].to_numpy()[first])
        by_age = c_index(k, d, age)
        by_age = max(by_age, 1.0 - by_age)  # either direction
        assert oracle > 0.64 and by_age < 0.57 and oracle - by_age > 0.1, (grid, oracle, by_age)


def test_grid_labels() -> None:
    observed = np.array([0.2, 1.0, 1.5, 13.9, 14.0, 14.5, 3.0, 200.0])
    event = np.array([1, 1, 1, 1, 1, 1, 0, 1], dtype=bool)
    interval, flag = grid_labels(observed, event, 1, 14)
    assert interval.tolist() == [0, 0, 1, 13, 13, 13, 2, 13]
    assert flag.tolist() == [1, 1, 1, 1, 1, 0, 0, 0]  # past the grid: censored in the last interval
    interval, flag = grid_labels(np.array([7.0, 7.5, 111.0, 113.0]), np.ones(4, dtype=bool), 7, 16)
    assert interval.tolist() == [0, 1, 15, 15] and flag.tolist() == [1, 1, 1, 0]


def test_lifetimes_follow_the_true_hazard() -> None:
    """With no censoring, the share of creatives stopping on each day matches the oracle hazard."""
    n = 100_000
    rng = np.random.default_rng(0)
    quality, exposure = np.full(n, -1.0), np.zeros(n)  # low CTR: cut-out early
    params = HazardParams()
    life = draw_lifetimes(quality, exposure, np.full(n, -120.0), 0.0, params, rng)
    assert np.array_equal(life.lifetime, np.floor(life.lifetime))  # stops at the end of a day
    h = daily_hazard(quality[:1], exposure[:1], np.arange(1, 15), params)[0]
    at_risk = n
    for a in range(1, 6):
        stopped = int((life.lifetime == a).sum())
        assert abs(stopped / at_risk - h[a - 1]) < 4 * np.sqrt(h[a - 1] / at_risk)
        at_risk -= stopped
    # a subject at origin age 0 (launch day) has the hazards from launch; at origin age 3, the same
    # curve three days on
    sub = life.subjects(np.array([0, 0]), np.array([0.0, 3.0]))
    np.testing.assert_allclose(sub.oracle_short[0], h.astype(np.float32))
    np.testing.assert_allclose(sub.oracle_short[1, :11], h[3:].astype(np.float32))
    # cut-out: a low-CTR creative's early hazard is above a high-CTR one's
    high = daily_hazard(np.array([1.0]), np.zeros(1), np.arange(1, 15), params)[0]
    assert h[0] > 2 * high[0]


def test_ctr_weights() -> None:
    w = ctr_weights(np.array([100, 10, 0, 50]), np.array([10, 0, 0, 5]), alpha=20.0)
    assert w[2] == 0 and w[1] > 0  # no rows: 0; no clicks: still counted
    assert w[0] > w[1]
    np.testing.assert_allclose(w[[0, 1, 3]].mean(), 1.0)


def test_subject_ids_cannot_collide() -> None:
    with pytest.raises(ValueError, match="days"):
        dataclasses.replace(SMALL, days=SUBJECT_DAY_STRIDE + 1, rows=10**6).validate()
    big = 2**63 // SUBJECT_DAY_STRIDE - 1  # the largest creative id on the last allowed day still fits
    assert big * SUBJECT_DAY_STRIDE + SUBJECT_DAY_STRIDE - 1 <= np.iinfo(np.int64).max


# --------------------------------------------------------------------------------------------
# output directory handling and the CLI
# --------------------------------------------------------------------------------------------


def test_refuses_non_empty_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        generate(dataclasses.replace(SMALL, rows=300), out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dir left behind
    # --overwrite replaces generated data only, never a directory holding other things
    with pytest.raises(OutputExistsError, match=r"keep\.txt"):
        generate(dataclasses.replace(SMALL, rows=300), out, overwrite=True, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_empty_output_dir_is_fine(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    generate(dataclasses.replace(SMALL, rows=300), out, progress=False)
    assert len(_files(out)) == SMALL.days


def test_crash_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    gen = importlib.import_module("recsys_mtl.synth.generate")
    real, calls = gen.chunk_table, []

    def failing(*args: object) -> pa.Table:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(*args)

    monkeypatch.setattr(gen, "chunk_table", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate(SMALL, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_generate_refuse_and_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["generate", "--out", str(out), "--rows", "3000", "--days", "2", "--seed", "3"]
    args += ["--users", "500", "--creatives", "300", "--advertisers", "20", "--campaigns", "50"]
    args += ["--no-progress", "--conversion-rate", "0.05", "--rho", "-0.2"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 3000 and summary["files"] == 2
    first = [f.read_bytes() for f in _files(out)]
    meta = json.loads((out / "_synth.json").read_text())
    assert meta["config"]["rho"] == -0.2 and meta["config"]["users"] == 500

    assert main(args) == 2  # non-empty: refused, untouched
    assert "--overwrite" in capsys.readouterr().err
    assert [f.read_bytes() for f in _files(out)] == first

    assert main([*args, "--overwrite", "--seed", "4"]) == 0
    assert [f.read_bytes() for f in _files(out)] != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli"]


def test_cli_rejects_bad_knobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--out", str(tmp_path / "x"), "--rho", "1.5", "--no-progress"]) == 2
    assert "rho" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_label_follow_up_observes_stops_after_the_window(tmp_path: Path) -> None:
    """With a follow-up of 20 days the 14-day grid is fully observed: nobody is censored inside it,
    and subjects of the last day still have events."""
    cfg = SynthConfig(
        rows=20_000, days=3, seed=3, users=1_000, creatives=400, hazard_base=-3.0, label_follow_up_days=20.0
    )
    generate(cfg, tmp_path / "d", progress=False)
    t = pq.read_table(tmp_path / "d")
    k = t["hazard_short_interval"].to_numpy()
    d = t["hazard_short_event"].to_numpy()
    assert np.all((d == 1) | (k == 13))  # censored only past the grid's end
    last = _day_index(t) == cfg.days - 1
    assert d[last].any() and (k[last] > 0).any()
