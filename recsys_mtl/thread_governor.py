"""Intra-op threads that follow the machine: fewer while other processes compete for the CPUs.

On a shared machine (docs/BENCHMARKS.md, "Throughput on a shared machine") torch's threads meet at a
barrier after every parallel operation. When another process holds a CPU, the sibling a thread
waits for is descheduled, and the whole team waits for it: HoME training on 2 threads beside 4
single-threaded busy loops kept 19% of its quiet speed with a short spin, while 1 thread (no
barrier at all) kept 28% of the 2-thread quiet speed, and 44% against 25% beside 2 loops. Passive
waiting survives too, but costs a third of the quiet speed; the thread count can change at any
step (`torch.set_num_threads`), the waiting policy only before torch loads.

`ThreadGovernor` chooses the count by measuring, not by guessing from the load: it times every
training step (same-sized batches, so step times compare), and from time to time tries the
neighbouring counts of a halving chain (`max, max // 2, ..., 1`) for a few steps each, keeping the
fastest (the current count is timed again after the others before a switch, and keeps the
better of its two figures, so a change during the probe is not taken for another count's merit).
It probes

- once at the start (after `warmup` steps and a window of timed ones),
- when the current count's recent steps are `slowdown` times slower than when it was chosen
  (contention arrived, or got worse),
- and every `probe_every_s` seconds otherwise (contention may have gone): the interval doubles each
  time a probe keeps the count, up to `max_probe_every_s`, and starts again after a switch.

On a quiet machine that costs a few steps at a slower count every few minutes (well under 1% of a
run); beside CPU-bound neighbours it moves to the count that gets the most out of its share. A
switch needs the other count to be `margin` faster, so noise does not flip it back and forth.
The decisions go to the log and into run.json (`summary`).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("recsys_mtl.threads")


@dataclass(frozen=True)
class GovernorConfig:
    """How the governor measures (step counts) and how often it looks again (seconds)."""

    warmup: int = 10  # first steps of a run that are not timed (allocations, first-call setup)
    settle: int = 1  # steps after a change of count that are not timed (threads waking, caches)
    probe_steps: int = 5  # timed steps per count in a probe; their median is the count's figure
    window: int = 5  # recent steps of the current count that the slowdown check reads
    slowdown: float = 1.3  # current count this much slower than when chosen: probe now
    margin: float = 0.9  # another count must take <= margin x the current one's step time
    probe_every_s: float = 20.0
    max_probe_every_s: float = 320.0


def thread_chain(max_threads: int) -> list[int]:
    """The counts tried: `max_threads`, halved down to 1 (2 -> [2, 1]; 12 -> [12, 6, 3, 1])."""
    chain = [max(1, max_threads)]
    while chain[-1] > 1:
        chain.append(chain[-1] // 2)
    return chain


@dataclass
class Switch:
    step: int
    old: int
    new: int
    seconds_per_step: dict[int, float]


class ThreadGovernor:
    """Call `after_step(seconds)` after every training step with its wall time; the governor sets
    torch's intra-op threads (through `set_threads`) for the steps that follow."""

    def __init__(
        self,
        max_threads: int,
        *,
        set_threads: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        config: GovernorConfig | None = None,
        announce: bool = True,
    ) -> None:
        if set_threads is None:
            import torch

            set_threads = torch.set_num_threads
        self.chain = thread_chain(max_threads)
        self.cfg = config or GovernorConfig()
        self._set = set_threads
        self._clock = clock
        self._announce = announce
        self.current = self.chain[0]
        self._set(self.current)
        self.step = 0
        self.steps_at: dict[int, int] = {n: 0 for n in self.chain}
        self.switches: list[Switch] = []
        self.probes = 0
        self._recent: deque[float] = deque(maxlen=self.cfg.window)
        self._reference: float | None = None  # the current count's step time when it was chosen
        self._interval = self.cfg.probe_every_s
        self._next_probe = float("inf")  # the first probe starts once the window has filled
        # a probe in progress: the counts still to measure, the one being measured, its times
        self._why = ""
        self._before = 0.0  # the current count's step time as a probe starts
        self._plan: list[int] = []
        self._measuring: int | None = None
        self._times: list[float] = []
        self._skip = 0
        self._found: dict[int, float] = {}

    @property
    def adaptive(self) -> bool:
        return len(self.chain) > 1

    def after_step(self, seconds: float) -> None:
        """Record one step's wall time, and set the thread count for the next step."""
        self.step += 1
        self.steps_at[self._running()] += 1
        if not self.adaptive:
            return
        if self._measuring is not None:
            self._probe_step(seconds)
            return
        if self.step <= self.cfg.warmup:
            return
        self._recent.append(seconds)
        if len(self._recent) < self._recent.maxlen:  # type: ignore[operator]
            return
        recent = statistics.median(self._recent)
        if self._reference is None:  # the first full window: probe the neighbours at once
            self._start_probe(recent, "start")
        elif recent > self.cfg.slowdown * self._reference:
            self._start_probe(recent, f"steps {recent / self._reference:.1f}x slower than when chosen")
        elif self._clock() >= self._next_probe:
            self._start_probe(recent, "periodic")

    def _running(self) -> int:
        return self._measuring if self._measuring is not None else self.current

    def _neighbours(self) -> list[int]:
        i = self.chain.index(self.current)
        return [self.chain[j] for j in (i + 1, i - 1) if 0 <= j < len(self.chain)]

    def _start_probe(self, current_seconds: float, why: str) -> None:
        self.probes += 1
        self._why = why
        self._before = current_seconds
        self._found = {self.current: current_seconds}
        self._plan = self._neighbours()
        self._measure_next()

    def _measure_next(self) -> None:
        self._measuring = self._plan.pop(0)
        self._times, self._skip = [], self.cfg.settle
        self._set(self._measuring)

    def _probe_step(self, seconds: float) -> None:
        if self._skip:
            self._skip -= 1
            return
        self._times.append(seconds)
        if len(self._times) < self.cfg.probe_steps:
            return
        assert self._measuring is not None
        measured, self._found[self._measuring] = self._measuring, statistics.median(self._times)
        if not self._plan and measured != self.current and self._better_than(self._before) is not None:
            # Another count looked faster: time the current one again before switching, so that a
            # change during the probe (the run's first steps speeding up, a neighbour leaving)
            # is not taken for the other count's merit; the current count keeps the better figure.
            self._plan = [self.current]
        if self._plan:
            self._measure_next()
            return
        self._measuring = None
        self._found[self.current] = min(self._found[self.current], self._before)
        self._decide()

    def _better_than(self, seconds: float) -> int | None:
        """The fastest other count measured in this probe, if it beats `seconds` by the margin."""
        others = {n: s for n, s in self._found.items() if n != self.current}
        best = min(others, key=others.__getitem__, default=None)
        return best if best is not None and others[best] <= self.cfg.margin * seconds else None

    def _decide(self) -> None:
        found, old = self._found, self.current
        best = self._better_than(found[old])
        switch = best is not None
        new = best if best is not None else old
        self._set(new)
        self.current, self._reference = new, found[new]
        self._recent.clear()
        # a kept count is looked at again less and less often; a switch (or the start) resets that
        if switch or self._why == "start":
            self._interval = self.cfg.probe_every_s
        else:
            self._interval = min(2 * self._interval, self.cfg.max_probe_every_s)
        self._next_probe = self._clock() + self._interval
        figures = ", ".join(f"{n} thread(s) {s:.3f} s" for n, s in sorted(found.items(), reverse=True))
        if switch:
            self.switches.append(Switch(self.step, old, new, dict(found)))
            if self._announce:
                log.info(
                    "threads: %d -> %d at step %d (%s; per step %s): %s",
                    old, new, self.step, self._why, figures,
                    "fewer threads lose less to barriers while other processes hold CPUs"
                    if new < old else "the CPUs are free again",
                )  # fmt: skip
        elif self._announce:
            log.debug("threads: keep %d at step %d (%s; per step %s)", old, self.step, self._why, figures)

    def summary(self) -> dict[str, Any]:
        """What run.json records: the counts tried, steps at each, every switch."""
        return {
            "adaptive": self.adaptive,
            "chain": self.chain,
            "final": self.current,
            "steps_at": {str(n): k for n, k in self.steps_at.items()},
            "probes": self.probes,
            "switches": [
                {"step": s.step, "from": s.old, "to": s.new,
                 "seconds_per_step": {str(n): round(v, 6) for n, v in s.seconds_per_step.items()}}
                for s in self.switches
            ],
        }  # fmt: skip
