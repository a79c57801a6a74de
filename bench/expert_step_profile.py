"""Benchmark (issue 16, item 3): where a step of the shipped HoME model goes, in this process.

Builds the shipped recipe's model (configs/ads_ranker.yaml), times its training step on one batch
of 2,048 random rows (forward, loss, backward, Adam on the dense layers; eager, unsharded tables:
the dense part the trainer runs, without the reader or DMP) at THREADS torch threads, median of 20
steps, and its scripted forward at 2,000 rows on 1 thread (median of 30); then the torch profiler's
self CPU time of 10 more, by category (matrix products, the optimizer, everything else). Run it
with this checkout and with a worktree of an older commit (PYTHONPATH and working directory at
the worktree) to compare code, alternating a few times: the in-process numbers move less between
runs than whole training runs do.

usage: .venv/bin/python bench/expert_step_profile.py [THREADS=2]
"""

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from recsys_mtl.devtools.fixtures import make_raw_table
from recsys_mtl.export import script_model
from recsys_mtl.models.losses import total_loss
from recsys_mtl.models.model import build_model
from recsys_mtl.recipe import load_recipe
from recsys_mtl.targets import targets_from_table
from recsys_mtl.transform import FeatureTransform

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = {  # self CPU time of an op counts under the first category whose prefix it has
    "matmul": ("mm", "addmm", "bmm", "baddbmm"),
    "embedding": ("embedding", "_embedding"),
    "optimizer": ("Optimizer", "lerp", "sqrt", "addcdiv", "addcmul", "_foreach"),
}


def by_category(prof: profile, calls: int) -> dict[str, float]:
    """ms per call of each category's self CPU time."""
    total: dict[str, float] = {}
    for e in prof.key_averages():
        name = e.key.replace("aten::", "")
        cat = next((c for c, ks in CATEGORIES.items() if name.startswith(ks)), "other")
        total[cat] = total.get(cat, 0.0) + e.self_cpu_time_total / 1000 / calls
    return {k: round(v, 2) for k, v in sorted(total.items(), key=lambda kv: -kv[1])}


def median_ms(fn: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 2)


def main() -> int:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    r = load_recipe(ROOT / "configs" / "ads_ranker.yaml")
    torch.manual_seed(0)
    m = build_model(r).train()
    tf = FeatureTransform.from_recipe(r)
    tab = make_raw_table(r, 2048)
    b, tg = tf(tab), targets_from_table(r, tab)
    opt = torch.optim.Adam([p for n, p in m.named_parameters() if "sparse_arch" not in n], lr=1e-3)

    def step() -> None:
        loss, _ = total_loss(r, m(b.sparse, b.dense), tg)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    ms = median_ms(step, 20)
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(10):
            step()
    print(f"train step {ms} ms (median of 20); profile ms/step by category {by_category(p, 10)}")
    torch.set_num_threads(1)
    scripted = script_model(m.eval())
    b2 = tf(make_raw_table(r, 2000, seed=3))
    args: tuple[Any, ...] = (b2.sparse, b2.dense)
    if hasattr(tf, "as_grouped"):  # trees with grouped exports: one user per row, as before
        g = tf.as_grouped(b2)
        args = (g.sparse, g.dense, g.group)
    with torch.inference_mode():
        for _ in range(5):
            scripted(*args)
        ms = median_ms(lambda: scripted(*args), 30)
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(10):
                scripted(*args)
    print(f"forward at 2,000 rows, 1 thread: {ms} ms (median of 30); profile ms/call {by_category(p, 10)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
