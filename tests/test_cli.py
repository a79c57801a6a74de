"""The real CLI, run as a user runs it (a subprocess of the installed console script)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recsys_mtl.cli import SUBCOMMANDS
from tests.conftest import cli


def test_help_lists_every_subcommand() -> None:
    r = cli("--help")
    assert r.returncode == 0
    for name in SUBCOMMANDS:
        assert name in r.stdout
        sub = cli(name, "--help")
        assert sub.returncode == 0 and "usage: recsys-mtl " + name in sub.stdout


def test_summary_reports_bad_data_by_file_and_column(data_dir: Path) -> None:
    f = data_dir / "dt=2026-01-02" / "part-00000.parquet"
    pq.write_table(pq.read_table(f).drop_columns(["hour"]), f)
    r = cli("summary", "--data", str(data_dir))
    assert r.returncode == 2
    assert f"{f} column 'hour': missing column" in r.stderr
    assert "Traceback" not in r.stderr


def test_summary_on_good_data(data_dir: Path) -> None:
    r = cli("summary", "--data", str(data_dir))
    assert r.returncode == 0, r.stderr
    assert "rows: 2,000 over 3 day(s)" in r.stdout


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    r = cli("demo", "--out", str(tmp_path / "demo"), "--rows", "30000", "--days", "2")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "rows: 30,000 over 2 day(s)" in out
    for task in ("ctr", "cvr", "ctcvr", "hazard_short", "hazard_long"):
        assert task in out
    auc_lines = [line for line in out.splitlines() if line.startswith("ctr ")]
    oracle_auc = float(auc_lines[0].split("AUC")[1])
    assert 0.6 < oracle_auc < 0.95  # the oracle ranks clicks far better than chance
    assert (tmp_path / "demo" / "data").is_dir()
    # step 6: a real server answered a sample request for every task, then stopped
    assert "POST /score, 8 candidates" in out and "server stopped" in out
    header = next(line for line in out.splitlines() if line.strip().startswith("creative "))
    for col in ("ctr", "cvr", "ctcvr", "hazard_short_risk", "hazard_long_risk"):
        assert col in header
    diff = float(out.split("max |server - offline scorer| over these scores: ")[1].split()[0])
    assert diff < 1e-5
    # the first screen says in words how to read the numbers and whether each task beat chance
    assert "How to read the table above" in out and "lift on the held-out day: ctr " in out


def test_demo_lift_verdict_names_a_task_at_chance() -> None:
    from recsys_mtl.cli.demo import lift_verdict

    good = {"tasks": {"ctr": {"oracle_lift": 0.7}, "hazard_short": {"oracle_lift": 0.4}}}
    assert lift_verdict(good).endswith("every task ranks better than chance")
    bad = {"tasks": {"ctr": {"oracle_lift": 0.7}, "hazard_short": {"oracle_lift": -0.11}, "cvr": {}}}
    line = lift_verdict(bad)
    assert "hazard_short -0.11" in line and line.endswith("NOT above chance: hazard_short, cvr")
