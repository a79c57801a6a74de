"""The creatives' content vectors (`creative_content`): column shape, type and nulls, determinism,
how much of the creative's hidden attributes they carry, an oracle untouched by them, config checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from recsys_mtl.cli import main
from recsys_mtl.synth import SynthConfig, World, build_world, generate, synth_schema

# A few thousand rows over two days, chunks and files that do not line up: well under a second.
TINY = SynthConfig(
    rows=6_000,
    days=2,
    seed=5,
    users=600,
    creatives=400,
    advertisers=20,
    campaigns=60,
    chunk_rows=1_700,
    rows_per_file=2_500,
    content_missing_rate=0.1,
)
# Enough creatives for a stable least-squares fit of 32 coefficients; few users (build_world only).
MANY_CREATIVES = SynthConfig(users=500, creatives=6_000, advertisers=40, campaigns=120, seed=3)


def _read(root: Path) -> pa.Table:
    return ds.dataset(root, format="parquet", partitioning="hive").to_table()


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("content") / "data"
    generate(TINY, out, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_out: Path) -> pa.Table:
    return _read(tiny_out)


def _vectors(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(rows x dim float32 with zeros under nulls, null mask) of a fixed-size-list column."""
    arr = column.combine_chunks()
    dim = arr.type.list_size
    values = arr.values.fill_null(0.0).to_numpy()  # Parquet keeps no values under a null vector
    return values.reshape(-1, dim), arr.is_null().to_numpy(zero_copy_only=False)


def test_column_type_shape_and_nulls(tiny: pa.Table) -> None:
    field = tiny.schema.field("creative_content")
    assert field.type == pa.list_(pa.float32(), 32) and field.nullable
    assert tiny.schema.names.index("creative_content") == tiny.schema.names.index("creative_ctr_to_date") + 1
    values, null = _vectors(tiny["creative_content"])
    assert values.shape == (TINY.rows, 32) and values.dtype == np.float32
    assert np.isfinite(values).all()

    world = build_world(TINY)
    creative = tiny["creative_id"].to_numpy()
    np.testing.assert_array_equal(null, world.creative_content_missing[creative])
    np.testing.assert_array_equal(values[~null], world.creative_content[creative[~null]])
    assert 0.0 < null.mean() < 0.3  # some rows' creatives have no vector, most do
    # one vector per creative: every row of a creative carries the same one
    first = {c: values[r] for r, c in enumerate(creative)}
    for r in range(0, TINY.rows, 97):
        np.testing.assert_array_equal(values[r], first[int(creative[r])])

    missing = world.creative_content_missing
    assert 0.05 < missing.mean() < 0.15  # about content_missing_rate of the creatives
    assert not world.creative_content[missing].any()
    ok = world.creative_content[~missing].astype(np.float64)
    np.testing.assert_allclose(ok.mean(axis=0), 0.0, atol=0.25)  # standardised dimensions
    np.testing.assert_allclose(ok.std(axis=0), 1.0, atol=0.2)


def test_no_content_column_with_dim_zero_and_other_dims() -> None:
    assert "creative_content" not in synth_schema(0).names
    assert synth_schema(8).field("creative_content").type == pa.list_(pa.float32(), 8)
    world = build_world(dataclasses.replace(TINY, content_dim=0))
    assert world.creative_content.shape == (TINY.creatives, 0)
    assert build_world(dataclasses.replace(TINY, content_dim=8)).creative_content.shape == (TINY.creatives, 8)


def test_determinism_by_seed() -> None:
    a, b = build_world(TINY), build_world(TINY)
    np.testing.assert_array_equal(a.creative_content, b.creative_content)
    np.testing.assert_array_equal(a.creative_content_missing, b.creative_content_missing)
    other = build_world(dataclasses.replace(TINY, seed=TINY.seed + 1))
    assert not np.array_equal(a.creative_content, other.creative_content)

    # the knobs change only what they are about: same projection and noise for every signal, and a
    # lower missing rate's missing creatives are a subset of a higher one's
    fewer = build_world(dataclasses.replace(TINY, content_missing_rate=0.02))
    assert fewer.creative_content_missing.sum() < a.creative_content_missing.sum()
    assert not (fewer.creative_content_missing & ~a.creative_content_missing).any()
    both = ~a.creative_content_missing
    np.testing.assert_array_equal(fewer.creative_content[both], a.creative_content[both])
    noise = build_world(dataclasses.replace(TINY, content_signal=0.0)).creative_content
    pure = build_world(dataclasses.replace(TINY, content_signal=1.0)).creative_content
    s = TINY.content_signal
    np.testing.assert_allclose(a.creative_content, np.sqrt(s) * pure + np.sqrt(1 - s) * noise, atol=1e-5)


def _holdout_r2(x: np.ndarray, y: np.ndarray) -> float:
    """R^2 on the second half of the rows of a least-squares fit (with intercept) on the first half."""
    design = np.column_stack([np.ones(len(x)), x.astype(np.float64)])
    half = len(y) // 2
    coef, *_ = np.linalg.lstsq(design[:half], y[:half], rcond=None)
    resid = y[half:] - design[half:] @ coef
    return float(1.0 - resid.var() / y[half:].var())


def _content_r2(world: World) -> dict[str, float]:
    """Held-out R^2 of a linear read-out from a creative's content vector to its effects on the CTR
    logit (category, format, quality) and to its hazard driver (the creative's part of the daily
    hazard logit at launch, -cut q_i + exposure e_i: lifetimes.py), creatives with a vector only."""
    cfg = world.cfg
    ok = ~world.creative_content_missing
    driver = -cfg.hazard_cut * world.creative_quality + cfg.hazard_exposure * world.creative_exposure
    x = world.creative_content[ok]
    return {
        "ctr_effect": _holdout_r2(x, world.creative_eff_ctr[ok]),
        "hazard_driver": _holdout_r2(x, driver[ok]),
    }


def test_content_carries_the_creatives_attributes() -> None:
    r2 = {
        s: _content_r2(build_world(dataclasses.replace(MANY_CREATIVES, content_signal=s)))
        for s in (0.0, 0.5, 0.9)
    }
    for target in ("ctr_effect", "hazard_driver"):
        assert abs(r2[0.0][target]) < 0.03, r2  # pure noise: nothing to read
        assert r2[0.5][target] > 0.55, r2  # the default: a real but partial share
        assert r2[0.9][target] > 0.85, r2
        assert r2[0.9][target] > r2[0.5][target] + 0.1, r2
        assert r2[0.5][target] < 0.85, r2  # ... not an oracle


def test_every_other_column_is_the_same_without_content(
    tiny_out: Path, tiny: pa.Table, tmp_path: Path
) -> None:
    generate(dataclasses.replace(TINY, content_dim=0), tmp_path / "none", progress=False)
    none = _read(tmp_path / "none")
    assert "creative_content" not in none.schema.names
    assert none.schema.names == [n for n in tiny.schema.names if n != "creative_content"]
    for name in none.schema.names:  # the oracle and every label and feature, bit for bit
        assert none[name].equals(tiny[name]), name
    for name in ("oracle_ctr", "oracle_cvr", "oracle_hazard_short"):
        assert none[name].null_count == 0 and len(none[name]) == TINY.rows
    # the calibrated world is the same too
    with_meta, none_meta = (
        json.loads((d / "_synth.json").read_text()) for d in (tiny_out, tmp_path / "none")
    )
    for key in ("ctr_bias", "cvr_bias", "stats"):
        assert with_meta[key] == none_meta[key], key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("content_dim", -1),
        ("content_dim", 2.5),
        ("content_signal", -0.1),
        ("content_signal", 1.5),
        ("content_signal", float("nan")),
        ("content_missing_rate", 1.01),
        ("content_missing_rate", -0.5),
    ],
)
def test_config_validation_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(TINY, **{field: value}).validate()


def test_cli_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["generate", "--out", str(out), "--rows", "1000", "--days", "1", "--users", "200"]
    args += ["--creatives", "100", "--advertisers", "10", "--campaigns", "20", "--no-progress"]
    assert main([*args, "--content-dim", "4", "--content-signal", "0.8", "--content-missing-rate", "0"]) == 0
    table = _read(out)
    assert table.schema.field("creative_content").type == pa.list_(pa.float32(), 4)
    assert table["creative_content"].null_count == 0
    capsys.readouterr()
    assert main([*args, "--overwrite", "--content-signal", "2"]) == 2
    assert "content_signal" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = capsys.readouterr().out
    assert "--content-dim" in help_text and "--content-missing-rate" in help_text
