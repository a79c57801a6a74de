"""Training end to end through the real CLI: 1 process and 2 sharded processes (gloo, table-wise),
on small generated data with ground truth. Slow-ish (about a minute in all): the product's core."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from recsys_mtl.run import load_run
from recsys_mtl.synth import SynthConfig, generate
from tests.conftest import BIN, RECIPE_PATH, cli


def small_recipe(tmp: Path, model: dict[str, Any], name: str = "small") -> Path:
    """The shipped recipe with a small model and brisk learning rates, for fast tests."""
    d = yaml.safe_load(RECIPE_PATH.read_text())
    d["name"] = name
    d["model"] = model
    d["training"].update(
        batch_size=512,
        epochs=2,
        shuffle_buffer=20_000,
        allow_untrained_tasks=True,  # 6 training days: no full week for hazard_long's weekly grid
        dense_optimizer={"name": "adam", "lr": 0.003},
        sparse_optimizer={"name": "rowwise_adagrad", "lr": 0.1},
    )
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Frequent clicks and conversions, few users (each id seen often), rho 0.9 (CVR shares CTR's
    # structure) and a high hazard (creatives do stop): a minute of training has signal. 1,500
    # creatives: the hazard towers learn from creative statistics, which needs thousands of
    # survival subjects (300 creatives gave about 1,000, too few to generalise).
    out = tmp_path_factory.mktemp("train") / "data"
    cfg = SynthConfig(
        rows=120_000,
        days=8,
        seed=5,
        ctr=0.15,
        conversion_rate=0.3,
        users=500,
        creatives=1500,
        campaigns=300,
        advertisers=50,
        rows_per_file=15_000,
        hazard_base=-3.0,
        rho=0.9,
    )
    generate(cfg, out, progress=False)
    return out


def train(recipe: Path, data: Path, out: Path, *extra: str) -> dict[str, Any]:
    r = cli(
        "train",
        "--recipe",
        str(recipe),
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
        *extra,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads((out / "run.json").read_text())


def prior_logloss(data: Path, day: str, label: str, mask: str | None = None) -> float:
    t = pq.read_table(data / f"dt={day}")
    if label == "ctcvr":
        y = t.column("click").to_numpy() * t.column("conversion").to_numpy().astype(float)
    else:
        y = t.column(label).to_numpy().astype(float)
    if mask:
        y = y[t.column(mask).to_numpy() > 0]
    p = y.mean()
    return float(-(p * np.log(p) + (1 - p) * np.log(1 - p)))


MMOE = {"type": "mmoe", "num_experts": 3, "expert_hidden": [32], "tower_hidden": [16]}


def test_one_process_training_beats_the_prior_on_every_task(tmp_path: Path, data: Path) -> None:
    run = tmp_path / "run"
    info = train(small_recipe(tmp_path, MMOE), data, run, "--eval-days", "2", "--epochs", "3")
    assert info["world_size"] == 1 and info["steps"] > 0
    assert info["data"]["eval_days"] == ["2026-01-07", "2026-01-08"]
    m = json.loads((run / "metrics.json").read_text())["tasks"]
    for task, label, mask in [
        ("ctr", "click", None),
        ("cvr", "conversion", "click"),
        ("ctcvr", "ctcvr", None),
    ]:
        assert m[task]["auc"] > 0.6, (task, m[task])
        prior = np.mean([prior_logloss(data, d, label, mask) for d in info["data"]["eval_days"]])
        assert m[task]["logloss"] < prior - 0.005, (task, m[task], prior)
    # Hazards: the daily grid ranks held-out subjects well above a constant predictor's 0.5, by
    # their labels and against the true hazard (expected_lift; measured 0.58 and 0.56). The weekly
    # grid is not checked: 6 training days label only its first week.
    h = m["hazard_short"]
    assert h["c_index"] > 0.55 and h["expected_lift"] > 0.3, h
    r = cli(
        "evaluate",
        "--run",
        str(run),
        "--data",
        str(data),
        "--start",
        "2026-01-02",
        "--end",
        "2026-01-04",
        "--out",
        str(tmp_path / "train_days.json"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    h = json.loads((tmp_path / "train_days.json").read_text())["tasks"]["hazard_short"]
    assert h["c_index"] > 0.55, h  # and on the training days (measured 0.61, oracle 0.71)
    curve = info["loss_curve"]
    assert curve[-1]["loss"] < curve[0]["loss"]


def test_two_process_sharded_training(tmp_path: Path, data: Path) -> None:
    recipe = small_recipe(tmp_path, MMOE)
    info = train(recipe, data, tmp_path / "run2", "--nproc", "2", "--batch-size", "256")
    assert info["world_size"] == 2
    ranks = {
        r for p in info["sharding_plan"].values() if p["sharding_type"] == "table_wise" for r in p["ranks"]
    }
    assert ranks == {0, 1}, info["sharding_plan"]  # the planner really spread tables over both ranks
    assert all(p["sharding_type"] in ("table_wise", "data_parallel") for p in info["sharding_plan"].values())
    m2 = json.loads((tmp_path / "run2" / "metrics.json").read_text())["tasks"]
    # the same global batch (2 x 256) on 1 process reaches the same quality (AUC within 0.03)
    info1 = train(recipe, data, tmp_path / "run1")
    m1 = json.loads((tmp_path / "run1" / "metrics.json").read_text())["tasks"]
    assert abs(info1["samples"] - info["samples"]) <= 0.1 * info["samples"]
    for task in ("ctr", "cvr", "ctcvr"):
        assert abs(m1[task]["auc"] - m2[task]["auc"]) < 0.03, (task, m1[task]["auc"], m2[task]["auc"])


def table_weights(run: Path) -> dict[str, torch.Tensor]:
    state = load_run(run).model.state_dict()
    prefix = "sparse_arch.ebc.embedding_bags."
    return {k[len(prefix) :].split(".")[0]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.parametrize(
    ("sharding_types", "nproc"),
    [(["data_parallel"], 1), (["table_wise"], 1), (["table_wise", "data_parallel"], 2)],
)
def test_every_table_trains_whatever_its_sharding(
    tmp_path: Path, data: Path, sharding_types: list[str], nproc: int
) -> None:
    """A table keeps changing with more steps wherever the planner put it. (Data-parallel tables
    once kept their random initial values for a whole run: DMP replicates them as dense
    parameters that the fused in-backward optimizer does not own.) Same seed, so the two runs
    start from the same weights; a table identical after 2 and after 8 steps never trained."""
    d = yaml.safe_load(small_recipe(tmp_path, MMOE).read_text())
    d["training"]["sharding_types"] = sharding_types
    recipe = tmp_path / "sharding.yaml"
    recipe.write_text(yaml.safe_dump(d))
    runs = {}
    for steps in (2, 8):
        runs[steps] = train(
            recipe,
            data,
            tmp_path / f"s{steps}",
            "--max-steps",
            str(steps),
            "--eval-days",
            "0",
            "--nproc",
            str(nproc),
            "--batch-size",
            "256",
        )
    plan = runs[8]["sharding_plan"]
    assert {p["sharding_type"] for p in plan.values()} == set(sharding_types), plan
    early, late = table_weights(tmp_path / "s2"), table_weights(tmp_path / "s8")
    assert set(early) == set(plan), (sorted(early), sorted(plan))
    frozen = [t for t in plan if torch.equal(early[t], late[t])]
    assert not frozen, {t: plan[t]["sharding_type"] for t in frozen}


def test_train_refuses_bad_input(tmp_path: Path, data: Path) -> None:
    recipe = small_recipe(tmp_path, MMOE)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    cases = [
        (["--out", str(tmp_path / "busy")], "is not empty; pass --overwrite"),
        (["--out", str(tmp_path / "r"), "--start", "2026-01-08"], "nothing left to train on"),
        (["--out", str(tmp_path / "r"), "--start", "2027-01-01"], "no 'dt=YYYY-MM-DD' partitions"),
    ]
    for extra, msg in cases:
        r = cli("train", "--recipe", str(recipe), "--data", str(data), *extra, timeout=120)
        assert r.returncode == 2 and msg in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
    assert (tmp_path / "busy" / "x").read_text() == "keep me"


def test_killed_run_resumes_to_the_same_result(tmp_path: Path, data: Path) -> None:
    recipe = small_recipe(tmp_path, MMOE)
    common = [
        "--recipe",
        str(recipe),
        "--data",
        str(data),
        "--checkpoint-every",
        "15",
        "--max-steps",
        "90",
        "--threads",
        "1",
        "--no-progress",
    ]
    whole = tmp_path / "whole"
    assert cli("train", *common, "--out", str(whole), timeout=600).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [str(BIN), "train", *common, "--out", str(killed)],  # Popen: this one gets killed
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    latest = killed / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no clean-up, as when a machine dies
    proc.wait()
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    step = json.loads(latest.read_text())["step"]
    assert 0 < step < 90
    r = cli("train", *common, "--out", str(killed), "--resume", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from step-{step:08d} at step {step}" in r.stderr
    a = json.loads((whole / "metrics.json").read_text())["tasks"]
    b = json.loads((killed / "metrics.json").read_text())["tasks"]
    for task in ("ctr", "cvr", "ctcvr"):  # tolerance 1e-6: CPU training here is deterministic
        assert abs(a[task]["auc"] - b[task]["auc"]) < 1e-6, (task, a[task]["auc"], b[task]["auc"])
        assert abs(a[task]["logloss"] - b[task]["logloss"]) < 1e-6


def test_checkpoint_of_two_ranks_resumes_on_one_and_warm_starts(tmp_path: Path, data: Path) -> None:
    recipe = small_recipe(tmp_path, MMOE)
    two = tmp_path / "two"
    train(recipe, data, two, "--nproc", "2", "--batch-size", "256", "--max-steps", "30", "--eval-days", "1")
    # resume the finished 30-step, 2-rank run on 1 rank up to step 60 of the same global batch
    r = cli(
        "train",
        "--recipe",
        str(recipe),
        "--data",
        str(data),
        "--out",
        str(two),
        "--resume",
        "--max-steps",
        "60",
        "--no-progress",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "different world size or batch" in r.stderr
    info = json.loads((two / "run.json").read_text())
    assert info["world_size"] == 1 and info["steps"] == 60
    # warm start a new run from it: its first logged loss is already far below a cold start's
    warm = train(recipe, data, tmp_path / "warm", "--warm-start", str(two), "--max-steps", "20")
    cold = train(recipe, data, tmp_path / "cold", "--max-steps", "20")
    assert warm["warm_start"] == str(two)
    # (measured 0.90 of the cold loss, engagement 0.91: 60 steps on 1,500 creatives leave little
    # to carry over, and the hazard towers on three statistics learn slowly either way; a warm
    # start that loaded nothing would give 1.0 up to the data order, which is the same here)
    w0, c0 = warm["loss_curve"][0], cold["loss_curve"][0]
    assert w0["loss"] < 0.95 * c0["loss"], (w0, c0)
    assert w0["ctr"] + w0["ctcvr"] < 0.95 * (c0["ctr"] + c0["ctcvr"]), (w0, c0)
    # ... and from a registry (what the nightly job does): export, then warm-start 2 sharded ranks
    # from the model's current version, whose unsharded weights each rank slices into its shards
    reg = tmp_path / "registry"
    r = cli("export", "--run", str(two), "--registry", str(reg), "--name", "m", "--promote", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    warm2 = train(
        recipe,
        data,
        tmp_path / "warm2",
        "--warm-start",
        str(reg / "m"),
        "--max-steps",
        "20",
        "--nproc",
        "2",
        "--batch-size",
        "256",
    )
    assert warm2["loss_curve"][0]["loss"] < 0.95 * cold["loss_curve"][0]["loss"]  # measured 0.87


def test_without_a_progress_bar_the_log_still_shows_loss_and_throughput(tmp_path: Path, data: Path) -> None:
    """`--no-progress` (or a log file) used to print no loss at all: the last step always logs
    one line with the loss and samples/s, and a line every 10 s before it."""
    run = tmp_path / "run"
    r = cli("train", "--recipe", str(small_recipe(tmp_path, MMOE)), "--data", str(data), "--out", str(run),
            "--no-progress", "--max-steps", "6", "--eval-days", "0", timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if "step 6/6 (100%): loss " in line]
    assert len(lines) == 1 and "samples/s" in lines[0], r.stderr[-3000:]
    loss = float(lines[0].split("loss ")[1].split(",")[0])
    assert loss == pytest.approx(
        json.loads((run / "run.json").read_text())["loss_curve"][-1]["loss"], abs=1e-4
    )


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_help_names_the_run_directory_as_it_is_on_disk(command: str) -> None:
    r = cli(command, "--help")
    assert r.returncode == 0 and "checkpoints/" in r.stdout and "checkpoint/)" not in r.stdout
