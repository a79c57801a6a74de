"""The thread governor (recsys_mtl/thread_governor.py): fewer intra-op threads while other processes
compete for the CPUs, back to all of them when the CPUs are free, and almost no cost on a quiet
machine. Its input is each step's wall time; here a machine whose step time depends on the thread
count the governor set (quiet, then contended, then quiet) supplies them, with a clock that
advances by those times, so the decisions are checked without timing anything. What the governor
buys on the real 2-core machine is measured in bench/contention.py (docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from recsys_mtl.recipe import Recipe
from recsys_mtl.thread_governor import GovernorConfig, ThreadGovernor, thread_chain
from recsys_mtl.trainer import TrainConfig, train

QUIET = {2: 0.080, 1: 0.109}  # seconds per step: HoME on 2 cores, 26.3k vs 19.3k samples/s
CONTENDED = {2: 0.307, 1: 0.175}  # beside 2 busy loops: 2 threads wait at barriers (6.7k vs 11.7k)


class Machine:
    """Step times that follow the thread count the governor sets, with optional noise."""

    def __init__(self, times: dict[int, float], noise: float = 0.0, seed: int = 0) -> None:
        self.times, self.noise, self.rng = times, noise, random.Random(seed)
        self.threads: int | None = None
        self.clock = 0.0
        self.max_set = 0

    def set_threads(self, n: int) -> None:
        self.threads, self.max_set = n, max(self.max_set, n)

    def step(self) -> float:
        assert self.threads is not None
        t = self.times[self.threads] * (1 + self.noise * self.rng.uniform(-1, 1))
        self.clock += t
        return t


def _governor(machine: Machine, max_threads: int = 2) -> ThreadGovernor:
    return ThreadGovernor(max_threads, set_threads=machine.set_threads, clock=lambda: machine.clock)


def _run(governor: ThreadGovernor, machine: Machine, steps: int) -> list[int]:
    """The thread count of each step."""
    counts = []
    for _ in range(steps):
        counts.append(machine.threads)
        governor.after_step(machine.step())
    return counts


@pytest.mark.parametrize(("n", "chain"), [(1, [1]), (2, [2, 1]), (12, [12, 6, 3, 1]), (16, [16, 8, 4, 2, 1])])
def test_the_counts_tried_halve_down_to_one(n: int, chain: list[int]) -> None:
    assert thread_chain(n) == chain


def test_a_quiet_machine_keeps_every_thread_at_under_one_percent_cost() -> None:
    machine = Machine(QUIET, noise=0.15)  # +-15% per step: more than the quiet runs show
    governor = _governor(machine)
    counts = _run(governor, machine, 4000)  # 320 s
    assert governor.switches == [] and governor.current == 2 and machine.max_set == 2
    extra = machine.clock / (4000 * QUIET[2]) - 1  # against 2 threads at every step (noise averages out)
    assert counts.count(1) <= governor.probes * (1 + GovernorConfig().probe_steps)
    assert governor.probes <= 5  # at the start, then after 20, 40, 80, 160 s: the interval doubles
    assert extra < 0.01, extra


def test_contention_moves_to_fewer_threads_within_one_probe_and_back_when_it_ends() -> None:
    machine = Machine(QUIET)
    governor = _governor(machine)
    _run(governor, machine, 300)
    assert governor.current == 2
    machine.times = CONTENDED
    counts = _run(governor, machine, 300)
    # the slowdown shows in the window (3 steps), 1 thread is timed (1 + 5), 2 again (1 + 5): 1 kept,
    # apart from the periodic probes of 2 threads (6 steps after 20 s, then 40 s, ...)
    assert counts[:3] == [2] * 3 and counts[15:21] == [1] * 6
    assert counts[15:].count(1) >= 0.95 * 285
    assert [(s.old, s.new) for s in governor.switches] == [(2, 1)]
    assert governor.switches[0].seconds_per_step[1] == pytest.approx(CONTENDED[1])
    # contention ends: the next periodic probe (at most max_probe_every_s later) finds 2 faster
    machine.times = QUIET
    ended = machine.clock
    while governor.current == 1:
        governor.after_step(machine.step())
        assert machine.clock - ended < GovernorConfig().max_probe_every_s + 5
    assert [(s.old, s.new) for s in governor.switches] == [(2, 1), (1, 2)]
    summary = governor.summary()
    assert summary["adaptive"] and summary["final"] == 2 and len(summary["switches"]) == 2
    assert sum(summary["steps_at"].values()) == governor.step
    json.dumps(summary)  # run.json


def test_contention_from_the_first_step_is_caught_by_the_first_probe() -> None:
    machine = Machine(CONTENDED)
    governor = _governor(machine)
    counts = _run(governor, machine, 100)
    assert counts[:15] == [2] * 15 and counts[30:] == [1] * 70  # warm-up 10, window 5, the probe


def test_on_a_bigger_machine_it_climbs_to_the_best_count_not_just_the_least() -> None:
    machine = Machine({8: 0.10, 4: 0.12, 2: 0.18, 1: 0.30})  # quiet: 8 is best
    governor = _governor(machine, 8)
    _run(governor, machine, 200)
    assert governor.current == 8
    machine.times = {8: 0.60, 4: 0.20, 2: 0.15, 1: 0.25}  # 4 CPUs taken: 2 threads are best
    _run(governor, machine, 400)
    assert governor.current == 2 and machine.max_set == 8
    assert [(s.old, s.new) for s in governor.switches] == [(8, 4), (4, 2)]


def test_one_thread_is_not_governed() -> None:
    machine = Machine({1: 0.1})
    governor = _governor(machine, 1)
    _run(governor, machine, 50)
    assert not governor.adaptive and governor.probes == 0 and governor.summary()["steps_at"] == {"1": 50}


def test_it_sets_torchs_thread_count() -> None:
    before = torch.get_num_threads()
    try:
        governor = ThreadGovernor(2, clock=lambda: 0.0, announce=False)
        assert torch.get_num_threads() == 2
        for _ in range(40):  # 1 thread twice as fast: the first probe switches
            governor.after_step(0.05 if torch.get_num_threads() == 1 else 0.1)
        assert governor.current == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("fixed", [False, True])
def test_a_training_run_records_what_its_threads_did(
    data_dir: Path, tmp_path: Path, recipe: Recipe, fixed: bool
) -> None:
    before = torch.get_num_threads()
    try:
        cfg = TrainConfig(
            data_dir=data_dir, out=tmp_path / "run", eval_days=0, threads=2, progress=False, max_steps=30,
            batch_size=64,
            adapt_threads=False if fixed else None, allow_untrained_tasks=True,
        )  # fmt: skip
        train(recipe, cfg)
    finally:
        torch.set_num_threads(before)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    governor = info["thread_governor"]
    if fixed:
        assert governor is None
        return
    assert governor["adaptive"] and governor["chain"] == [2, 1] and governor["probes"] >= 1
    assert sum(governor["steps_at"].values()) == info["steps"] == 30
    assert governor["steps_at"]["1"] >= GovernorConfig().probe_steps  # the first probe ran
