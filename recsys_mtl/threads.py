"""The thread policy: how many threads torch uses, and how its OpenMP threads wait.

Two facts about shared machines (Kubernetes pods with CPU quotas, noisy neighbours, the nightly
job beside the server) decide it (docs/BENCHMARKS.md, "Throughput on a shared machine"):

- The CPUs a process may use are its affinity mask and its cgroup's CPU quota, not the host's core
  count: `available_cpus` reads both (`os.sched_getaffinity`; cgroup v2 `cpu.max`, v1
  `cpu.cfs_quota_us` / `cpu.cfs_period_us`). Ranks of one job split them (`threads_for`).
- libgomp's threads, on reaching a barrier, spin for GOMP_SPINCOUNT iterations (300,000 by default,
  a few hundred microseconds) before they sleep. When another process holds a CPU, the sibling a
  thread waits for is descheduled, and every barrier burns the spinner's timeslice: training beside
  two busy loops kept 22% of its quiet speed. Sleeping at once (OMP_WAIT_POLICY=PASSIVE) survives
  contention but costs a quarter of the quiet speed (a wake-up per barrier). `configure_openmp`
  sets a short spin (`SPIN_COUNT`) that keeps both, unless the environment already says how to
  wait (OMP_WAIT_POLICY or GOMP_SPINCOUNT given by the user), RECSYS_MTL_OMP_POLICY says another
  policy, or the recipe (`training.omp_wait`) or serving config (`runtime.omp_wait`) does.

The waiting is fixed for the life of the process; the thread count is not: a training run adapts it
to the machine as it goes (`recsys_mtl/thread_governor.py`), within the count chosen here.

libgomp reads its variables once, when torch loads it: `configure_openmp` must run before the first
`import torch`, which is why the command line calls it first thing (`recsys_mtl.cli.main`) and
every subcommand imports torch lazily. This module imports torch only inside functions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("recsys_mtl.threads")

# Iterations a waiting OpenMP thread spins before it sleeps (libgomp's default is 300,000).
SPIN_COUNT = "10000"
# How OpenMP threads wait, in the recipe (`training.omp_wait`), the serving config
# (`runtime.omp_wait`) or this environment variable (which wins over both):
#   "short-spin"  GOMP_SPINCOUNT=SPIN_COUNT (the default): quiet speed kept, contention survived
#   "passive"     OMP_WAIT_POLICY=PASSIVE: sleep at once (most robust, a quarter slower when quiet)
#   "libgomp"     libgomp's own default (a 300,000-iteration spin): the fastest on a machine of its own
#   "inherit"     leave the environment alone
#   an integer    GOMP_SPINCOUNT=<n>
POLICY_ENV = "RECSYS_MTL_OMP_POLICY"
OMP_WAIT_CHOICES = ("short-spin", "passive", "libgomp", "inherit")
OMP_WAIT_PATTERN = r"^(short-spin|passive|libgomp|inherit|[0-9]{1,12})$"
_USER_OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup's quota allows (quota / period), or None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class CPUs:
    """What this process may use: `count` CPUs (the affinity mask, capped by the cgroup quota)."""

    affinity: int
    quota: float | None

    @property
    def count(self) -> int:
        if self.quota is None:
            return self.affinity
        return max(1, min(self.affinity, math.ceil(self.quota - 1e-9)))

    def describe(self) -> str:
        quota = "none" if self.quota is None else f"{self.quota:g} CPUs"
        return f"{self.count} CPU(s) available (affinity {self.affinity}, cgroup quota {quota})"


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> CPUs:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    return CPUs(affinity=affinity, quota=_cgroup_quota(cgroup_root))


def threads_for(ranks: int = 1, cpus: CPUs | None = None) -> int:
    """Intra-op threads per rank when the user names none: the available CPUs split over the ranks."""
    cpus = cpus or available_cpus()
    return max(1, cpus.count // max(1, ranks))


def configure_openmp(environ: dict[str, str] | None = None, setting: str | None = None) -> str:
    """Set libgomp's waiting (module docstring) in `environ` (default: this process's) and return a
    line saying what holds. What decides, first to last: OMP_WAIT_POLICY or GOMP_SPINCOUNT set by
    the user, then RECSYS_MTL_OMP_POLICY, then `setting` (the recipe's `training.omp_wait` or the
    serving config's `runtime.omp_wait`), then "short-spin". Call before torch is imported."""
    env = os.environ if environ is None else environ
    given = {k: env[k] for k in _USER_OMP_VARS if k in env}
    if given:
        return f"OpenMP waiting: as the environment says ({given})"
    source = POLICY_ENV if POLICY_ENV in env else ("the config" if setting else "the default")
    policy = env.get(POLICY_ENV) or setting or "short-spin"
    if policy == "inherit":
        return f"OpenMP waiting: libgomp defaults (inherit, from {source})"
    if policy == "libgomp":
        return f"OpenMP waiting: libgomp defaults (a 300,000-iteration spin; from {source})"
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        what = "OMP_WAIT_POLICY=PASSIVE (sleep at once)"
    elif policy == "short-spin" or policy.isdigit():
        env["GOMP_SPINCOUNT"] = SPIN_COUNT if policy == "short-spin" else policy
        what = f"GOMP_SPINCOUNT={env['GOMP_SPINCOUNT']} (spin, then sleep)"
    else:
        env["GOMP_SPINCOUNT"] = SPIN_COUNT
        return (
            f"OpenMP waiting: GOMP_SPINCOUNT={SPIN_COUNT}; {policy!r} from {source} is not a policy "
            f"({', '.join(OMP_WAIT_CHOICES)} or a spin count)"
        )
    late = environ is None and "torch" in sys.modules
    return f"OpenMP waiting: {what}, from {source}" + (
        " - torch was already loaded, so it applies to child processes only" if late else ""
    )


def omp_wait_from_file(path: str | os.PathLike[str] | None, section: str) -> str | None:
    """`<section>.omp_wait` of a YAML recipe or serving config, read before torch loads (the full
    validation comes later, with the rest of the file); None when absent or unreadable."""
    if path is None:
        return None
    try:
        import yaml

        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
        value = doc[section]["omp_wait"]
    except (OSError, KeyError, TypeError, ValueError, ImportError):
        return None
    except Exception:  # a malformed YAML: the loader that follows reports it properly
        return None
    return str(value) if value is not None else None


def apply_thread_policy(threads: int | None = None, ranks: int = 1, interop: int | None = None) -> str:
    """Set torch's intra-op threads (`threads`, default `threads_for(ranks)`) and inter-op threads
    (`interop`, default 1: our graphs have no parallel branches worth a pool, and each pool thread
    is one more to schedule); returns the line to log at start."""
    import torch

    cpus = available_cpus()
    n = threads or threads_for(ranks, cpus)
    torch.set_num_threads(n)
    want = interop or 1
    # settable once per process, before any inter-op work: otherwise keep what is there
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(want)
    spin = os.environ.get("GOMP_SPINCOUNT", "libgomp default")
    wait = os.environ.get("OMP_WAIT_POLICY", "")
    return (
        f"threads: {n} intra-op ({'given' if threads else f'{cpus.count} CPU(s) / {ranks} rank(s)'}), "
        f"{torch.get_num_interop_threads()} inter-op; {cpus.describe()}; OpenMP spin {spin}"
        + (f", OMP_WAIT_POLICY={wait}" if wait else "")
    )


def serving_workers(torch_threads: int, cpus: CPUs | None = None) -> int:
    """`recsys-mtl serve` processes when `--workers` is not given: one per `torch_threads + 1` CPUs.

    A worker keeps `torch_threads` CPUs busy in its forward and one more with its event loop
    (decoding JSON, encoding answers: serving/inference.py runs beside it), so more workers than
    `cpus // (torch_threads + 1)` would make them take turns on the cores instead of adding
    throughput; fewer leaves cores idle. At least one."""
    cpus = cpus or available_cpus()
    return max(1, cpus.count // (max(1, torch_threads) + 1))
