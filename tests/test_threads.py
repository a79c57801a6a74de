"""The thread policy (recsys_mtl/threads.py): CPUs from affinity and cgroup quota, threads split
over ranks, OpenMP waiting set only where the user has not, and the command line setting it before
torch loads libgomp."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recsys_mtl.threads import (
    POLICY_ENV,
    SPIN_COUNT,
    CPUs,
    apply_thread_policy,
    available_cpus,
    configure_openmp,
    omp_wait_from_file,
    threads_for,
)


def _cgroup(tmp_path: Path, v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    return tmp_path


@pytest.mark.parametrize(
    ("v2", "v1", "quota"),
    [
        ("max 100000\n", None, None),  # v2 without a quota
        ("150000 100000\n", None, 1.5),  # v2: a pod limited to 1.5 CPUs
        (None, ("-1", "100000"), None),  # v1 without a quota
        (None, ("50000", "100000"), 0.5),
        (None, None, None),  # no cgroup files at all
    ],
)
def test_the_cgroup_quota_is_read(
    tmp_path: Path, v2: str | None, v1: tuple[str, str] | None, quota: float | None
) -> None:
    cpus = available_cpus(_cgroup(tmp_path, v2, v1))
    assert cpus.quota == quota
    assert cpus.affinity == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("affinity", "quota", "count"),
    [(16, None, 16), (16, 1.5, 2), (16, 4.0, 4), (2, 8.0, 2), (4, 0.5, 1)],
)
def test_available_cpus_are_the_affinity_capped_by_the_quota(
    affinity: int, quota: float | None, count: int
) -> None:
    assert CPUs(affinity, quota).count == count


def test_ranks_split_the_cpus() -> None:
    cpus = CPUs(affinity=16, quota=None)
    assert [threads_for(r, cpus) for r in (1, 2, 3, 4, 32)] == [16, 8, 5, 4, 1]
    assert threads_for(2, CPUs(affinity=16, quota=3.0)) == 1  # a 3-CPU pod, 2 ranks: 1 each


def test_openmp_waiting_is_set_unless_the_user_said() -> None:
    env: dict[str, str] = {}
    assert "GOMP_SPINCOUNT=" + SPIN_COUNT in configure_openmp(env)
    assert env == {"GOMP_SPINCOUNT": SPIN_COUNT}
    for given in ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "300000"}):
        env = dict(given)
        assert "as the environment says" in configure_openmp(env)
        assert env == given  # untouched
    env = {POLICY_ENV: "inherit"}
    configure_openmp(env)
    assert "GOMP_SPINCOUNT" not in env


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (None, {"GOMP_SPINCOUNT": SPIN_COUNT}),
        ("short-spin", {"GOMP_SPINCOUNT": SPIN_COUNT}),
        ("passive", {"OMP_WAIT_POLICY": "PASSIVE"}),
        ("libgomp", {}),
        ("inherit", {}),
        ("2500", {"GOMP_SPINCOUNT": "2500"}),
    ],
)
def test_the_recipe_or_config_says_how_to_wait(setting: str | None, expected: dict[str, str]) -> None:
    env: dict[str, str] = {}
    line = configure_openmp(env, setting)
    assert env == expected, line
    assert ("from the config" in line) == (setting is not None)
    # the environment wins over the file: the policy variable, then the user's own libgomp variables
    env = {POLICY_ENV: "passive"}
    configure_openmp(env, setting)
    assert env == {POLICY_ENV: "passive", "OMP_WAIT_POLICY": "PASSIVE"}
    env = {"GOMP_SPINCOUNT": "5"}
    configure_openmp(env, setting)
    assert env == {"GOMP_SPINCOUNT": "5"}


def test_omp_wait_is_validated_where_it_is_written(tmp_path: Path) -> None:
    from recsys_mtl.recipe import TrainingSpec
    from serving.config import Runtime

    assert TrainingSpec().omp_wait == "short-spin" and Runtime().omp_wait == "short-spin"
    for ok in ("passive", "libgomp", "inherit", "20000"):
        assert TrainingSpec(omp_wait=ok).omp_wait == ok and Runtime(omp_wait=ok).omp_wait == ok
    for bad in ("PASSIVE ", "spin", "-1", ""):
        with pytest.raises(ValueError, match="omp_wait"):
            TrainingSpec(omp_wait=bad)
        with pytest.raises(ValueError, match="omp_wait"):
            Runtime(omp_wait=bad)
    f = tmp_path / "r.yaml"
    f.write_text("training: {omp_wait: passive}\n")
    assert omp_wait_from_file(f, "training") == "passive"
    assert omp_wait_from_file(f, "runtime") is None
    f.write_text("training: [unclosed\n")
    assert omp_wait_from_file(f, "training") is None  # the recipe loader reports it, not this
    assert omp_wait_from_file(tmp_path / "absent.yaml", "training") is None


def test_apply_sets_torch_threads_and_reports_them() -> None:
    before = torch.get_num_threads()
    try:
        line = apply_thread_policy(1)
        assert torch.get_num_threads() == 1
        assert line.startswith("threads: 1 intra-op (given)") and "CPU(s) available" in line
        apply_thread_policy(None, ranks=64)
        assert torch.get_num_threads() == 1  # never zero
    finally:
        torch.set_num_threads(before)


def test_the_command_line_sets_the_spin_before_torch_loads(tmp_path: Path) -> None:
    """`recsys-mtl` children (training ranks, the server) inherit it; a user's setting wins."""
    probe = (
        "import os, sys; from recsys_mtl.cli import main; import recsys_mtl.cli.summary as s; "
        "s.run = lambda args: print('torch loaded' if 'torch' in sys.modules else 'torch not loaded', "
        "os.environ.get('GOMP_SPINCOUNT')); main(['summary', '--data', '.'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", POLICY_ENV)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["torch", "not", "loaded", SPIN_COUNT]
    env["GOMP_SPINCOUNT"] = "777"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "777"


def test_the_command_line_reads_omp_wait_from_the_recipe_before_torch_loads(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    text = Path(__file__).resolve().parents[1].joinpath("configs", "ads_ranker.yaml").read_text()
    recipe.write_text(text.replace("training:\n", "training:\n  omp_wait: passive\n", 1))
    probe = (
        "import os, sys; from recsys_mtl.cli import main; import recsys_mtl.cli.summary as s; "
        "s.run = lambda args: print('torch loaded' if 'torch' in sys.modules else 'torch not loaded', "
        "os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT')); "
        f"main(['summary', '--data', '.', '--recipe', {str(recipe)!r}])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", POLICY_ENV)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["torch", "not", "loaded", "PASSIVE", "None"]
