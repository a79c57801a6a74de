"""The inference thread: micro-batching of concurrent requests into one forward.

The event loop only decodes requests and awaits a future; everything heavy (feature transform,
forward, survival curves) runs here, on one dedicated thread whose torch thread count is set from
the config. While a forward runs, new requests queue up; the next round takes every queued request
for the same model, up to `max_batch_candidates`, transforms each into a grouped batch (a request's
user and context features once: one user row for all its candidates, `FeatureTransform.grouped`),
concatenates them (every request's user row, then every candidate), runs ONE forward, in which each
user's part is embedded and multiplied once (`MultiTaskModel.forward_grouped`), and splits the
outputs back by candidate offsets. There is no timer: an idle server runs a lone request immediately, so
batching adds no latency when there is nothing to batch with.

A merged batch larger than `max_forward_candidates` runs as several forwards of that size, and
between two of them the requests that arrived meanwhile get one round of their own: a 500-candidate
request that lands just behind a 2000-candidate one waits for one chunk (a few ms), not for the
whole of it. Rows are independent in every model, so chunked outputs equal one forward's.

Each request keeps the `LoadedModel` object it was routed to, so a hot swap never changes the model
under a request that is already queued or running. A request whose features fail the transform
gets its own error; the others in the round are unaffected. So does a request whose scores are not
finite (finite inputs far outside the model's range, such as a vector of values near the float32
limit, can overflow the forward): a 422 naming the first such candidate, never a NaN score.

Shadow jobs (a variant's shadow model) run only when no primary request is waiting, from a bounded
queue: when it is full, new shadow jobs are dropped and counted, so shadow scoring can never slow
down or block what users get.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from recsys_mtl.loader import LoadedModel, TaskInfo
from recsys_mtl.transform import FeatureBatch, TransformError
from serving.request import RequestError, ScoreRequest, transform_refusal

log = logging.getLogger("serving.inference")

Scores = dict[str, np.ndarray]


@dataclass
class Job:
    """One request for one model; `future` gets its scores (arrays in candidate order)."""

    model: LoadedModel
    request: ScoreRequest
    tasks: list[TaskInfo]
    future: cf.Future[Scores] = field(default_factory=cf.Future)
    enqueued_at: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        return self.request.num_candidates


def transform_request(model: LoadedModel, req: ScoreRequest) -> FeatureBatch:
    """The request's features as model inputs; a transform error becomes a RequestError naming
    where the offending column was sent and, where rows are at fault, the candidate (vectors are
    checked before they are queued, `serving.request.check_vectors`, by the same rules)."""
    try:
        return model.features(req.candidates, shared=req.features)
    except TransformError as e:
        raise transform_refusal(e, "features" if e.field in req.features else "candidates") from None
    except Exception as e:  # the transform names the column of what it expects; this is a bug
        log.warning("unexpected transform error on a request (answered 422)", exc_info=True)
        raise RequestError("candidates", f"cannot be transformed ({type(e).__name__})") from None


def score_jobs(
    jobs: list[Job], chunk: int | None = None, between: Callable[[], None] | None = None
) -> tuple[int, int]:
    """Score jobs that share one model in a single forward (or, with `chunk`, in forwards of at
    most `chunk` rows, calling `between` after every one but the last); resolve each job's future.

    Returns (requests, candidates) that went through the forward.
    """
    model = jobs[0].model
    ok: list[Job] = []
    batches: list[FeatureBatch] = []
    for j in jobs:
        try:
            batches.append(transform_request(model, j.request))
            ok.append(j)
        except Exception as e:  # this request only
            j.future.set_exception(e)
    if not ok:
        return 0, 0
    n = sum(b.batch_size for b in batches)
    try:
        batch = FeatureBatch.concat(batches)
        tasks = {t.name: t for j in ok for t in j.tasks}
        scores = model.postprocess(_forward(model, batch, chunk, between), list(tasks.values()))
        start = 0
        for j, b in zip(ok, batches, strict=True):
            stop = start + b.batch_size
            keys = [k for t in j.tasks for k in _keys(t)]
            got = {k: scores[k][start:stop] for k in keys}
            bad = _non_finite_rows(got)
            if bad.size:  # never a NaN score: the request's values are beyond what the model computes
                j.future.set_exception(_not_finite(bad))
            else:
                j.future.set_result(got)
            start = stop
    except Exception as e:  # an internal failure: every request of the round gets it (-> 5xx)
        log.exception("forward failed for %s v%s", model.name, model.version)
        for j in ok:
            if not j.future.done():
                j.future.set_exception(e)
    return len(ok), n


def _forward(
    model: LoadedModel, batch: FeatureBatch, chunk: int | None, between: Callable[[], None] | None
) -> dict[str, torch.Tensor]:
    """The model's outputs for `batch`, in forwards of at most `chunk` candidates (each chunk with
    the user rows its candidates read). Candidates are independent in every model, so the chunks'
    outputs concatenated are the whole batch's."""
    n = batch.batch_size
    if chunk is None or n <= chunk:
        return model.predict(batch)
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, n, chunk):
        parts.append(model.predict(batch.slice_rows(start, min(n, start + chunk))))
        if between is not None and start + chunk < n:
            between()
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _non_finite_rows(scores: Scores) -> np.ndarray:
    """The candidates (row indexes) with a non-finite score in any output."""
    bad: np.ndarray | None = None
    for v in scores.values():
        rows = ~np.isfinite(v) if v.ndim == 1 else ~np.isfinite(v).all(axis=tuple(range(1, v.ndim)))
        bad = rows if bad is None else bad | rows
    return np.flatnonzero(bad) if bad is not None else np.zeros(0, np.int64)


def _not_finite(rows: np.ndarray) -> RequestError:
    """Finite inputs whose scores are not: a value far outside what the model was trained on
    overflowed its float32 arithmetic (a vector feature has no standardisation or clipping, so a
    vector of values near the float32 limit does). The request's fault, never a NaN in an answer."""
    more = f" ({rows.size} candidates)" if rows.size > 1 else ""
    return RequestError(
        "candidates",
        f"candidate {int(rows[0])}: the model's scores are not finite for its feature values{more}: "
        "a value far outside the model's range (e.g. a vector value near the float32 limit) overflowed it",
    )


def _keys(t: TaskInfo) -> list[str]:
    return [t.name, f"{t.name}_survival", f"{t.name}_risk"] if t.kind == "hazard" else [t.name]


BatchObserver = Callable[[int, int, float], None]  # (requests, candidates, seconds)


class Overloaded(RuntimeError):
    """The queue holds more candidates than the config allows: the request is refused at once
    (HTTP 503 with Retry-After) instead of waiting behind a backlog it cannot beat."""


class InferenceWorker:
    """One thread that runs every forward; `submit` is safe to call from any thread."""

    def __init__(
        self,
        max_batch_candidates: int,
        torch_threads: int,
        shadow_queue: int = 64,
        on_batch: BatchObserver | None = None,
        on_shadow_drop: Callable[[], None] | None = None,
        max_forward_candidates: int | None = None,
    ) -> None:
        self.max_batch_candidates = max_batch_candidates
        self.max_forward_candidates = max_forward_candidates
        self.torch_threads = torch_threads
        self._on_batch = on_batch
        self._on_shadow_drop = on_shadow_drop
        self._queue: collections.deque[Job] = collections.deque()
        self._queued_candidates = 0
        self._shadow: collections.deque[tuple[Job, Callable[[Job], None]]] = collections.deque()
        self._shadow_max = shadow_queue
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued primary requests, then stop."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, job: Job, max_queued_candidates: int | None = None) -> cf.Future[Scores]:
        """Queue a request. Overloaded when `max_queued_candidates` would be exceeded (a request
        that finds the queue empty is always taken, whatever its size)."""
        with self._cv:
            if self._stopping:
                raise RuntimeError("the inference worker is stopping")
            if (
                max_queued_candidates is not None
                and self._queue
                and self._queued_candidates + job.size > max_queued_candidates
            ):
                raise Overloaded(
                    f"{self._queued_candidates} candidates are already waiting for the inference thread "
                    f"(runtime.max_queued_candidates = {max_queued_candidates})"
                )
            self._queue.append(job)
            self._queued_candidates += job.size
            self._cv.notify()
        return job.future

    def submit_shadow(self, job: Job, done: Callable[[Job], None]) -> bool:
        """Queue a shadow job; False (and counted) when the shadow queue is full."""
        with self._cv:
            if len(self._shadow) >= self._shadow_max or self._stopping:
                if self._on_shadow_drop is not None:
                    self._on_shadow_drop()
                return False
            self._shadow.append((job, done))
            self._cv.notify()
        return True

    def _take(self) -> tuple[list[Job], tuple[Job, Callable[[Job], None]] | None] | None:
        """The next round: queued jobs for one model up to the candidate cap, else one shadow job."""
        with self._cv:
            while not self._queue and not self._shadow:
                if self._stopping:
                    return None
                self._cv.wait()
            if not self._queue:
                return [], self._shadow.popleft()
            first = self._queue.popleft()
            jobs, total = [first], first.size
            # Same-model jobs in arrival order; others keep their place for the next round.
            rest: collections.deque[Job] = collections.deque()
            while self._queue:
                j = self._queue.popleft()
                if j.model is first.model and total + j.size <= self.max_batch_candidates:
                    jobs.append(j)
                    total += j.size
                else:
                    rest.append(j)
            self._queue.extendleft(reversed(rest))
            self._queued_candidates -= total
            return jobs, None

    def _run(self) -> None:
        torch.set_num_threads(self.torch_threads)
        while True:
            round_ = self._take()
            if round_ is None:
                return
            jobs, shadow = round_
            t0 = time.perf_counter()
            if shadow is not None:
                job, done = shadow
                score_jobs([job])
                try:
                    done(job)
                except Exception:  # a metering callback must never stop the worker
                    log.exception("shadow callback failed")
                continue
            n_req, n_cand = score_jobs(jobs, self.max_forward_candidates, self._serve_waiting)
            if self._on_batch is not None and n_req:
                self._on_batch(n_req, n_cand, time.perf_counter() - t0)

    def _serve_waiting(self) -> None:
        """Between two chunks of a large forward: one round of the requests that arrived meanwhile
        (chunked too, but not interleaved again), so a request that comes in behind a large one
        waits for one chunk, not for all of it; the large one then goes on."""
        with self._cv:
            if not self._queue:
                return
        round_ = self._take()
        if round_ is None or not round_[0]:
            return
        t0 = time.perf_counter()
        n_req, n_cand = score_jobs(round_[0], self.max_forward_candidates)
        if self._on_batch is not None and n_req:
            self._on_batch(n_req, n_cand, time.perf_counter() - t0)
