"""The scoring service: config + model pool + inference worker + metrics, without HTTP.

The HTTP routes (serving/routes.py) are thin: they read the body and call `ScoringService.score`,
which decodes, assigns the A/B variant, checks the request against the variant's model, queues it
for the inference thread and awaits the scores. Everything here can be driven from a test without
a server.

A watcher thread checks the config file and the registry every `runtime.reload_interval_s`:
- the registry: references that follow "current"/"latest" are re-resolved; a new version is
  loaded, validated and warmed up before it takes traffic (serving/pool.py);
- the config file: a changed file is parsed and validated, every model it names is brought up,
  and only then does it replace the running config (one reference assignment). A config that does
  not parse, or names a model that cannot be served, is rejected with a logged reason, and the
  last good config stays in force.

The request/response contract, limits, reload and A/B rules: (docs/DESIGN.md, "Serving contract").
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import logging
import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys_mtl.registry import Registry
from recsys_mtl.threads import apply_thread_policy
from serving.assignment import Assignment, assign
from serving.config import ConfigError, ServingConfig, Variant, load_config
from serving.inference import InferenceWorker, Job
from serving.metrics import MULTIPROCESS, ServingMetrics
from serving.pool import ModelPool
from serving.request import RequestError, ScoreRequest, check_against_model, decode
from serving.response import ScoreResult

log = logging.getLogger("serving.service")


class NotReady(RuntimeError):
    """No validated model for the variant yet (HTTP 503)."""


# An absolute POSIX path inside a message (a registry file in a load error, say).
_ABS_PATH = re.compile(r"(?<![\w.>-])/[^\s'\":,()]+")
PATH_KEYS = frozenset({"path", "registry"})


def redact_paths(value: Any, places: dict[str, str]) -> Any:
    """`value` (JSON-like) without filesystem paths: keys in PATH_KEYS dropped; inside strings each
    known place (a path, relative or absolute -> its placeholder) and any other absolute path
    replaced."""
    if isinstance(value, dict):
        return {k: redact_paths(v, places) for k, v in value.items() if k not in PATH_KEYS}
    if isinstance(value, list):
        return [redact_paths(v, places) for v in value]
    if isinstance(value, str):
        for path in sorted(places, key=len, reverse=True):  # the longest first: a root inside another
            if value == path:
                return places[path]
            value = re.sub(rf"(?<![\w./-]){re.escape(path)}(?=[/:])", places[path], value)
        return _ABS_PATH.sub("<path>", value)
    return value


def _file_signature(path: Path) -> tuple[int, int, str] | None:
    try:
        st = path.stat()
        return (st.st_mtime_ns, st.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    except OSError:
        return None


class ScoringService:
    def __init__(self, config_path: str | Path, registry: str | Path | None = None, workers: int = 1) -> None:
        self.config_path = Path(config_path)
        # how many worker processes serve this port (serving/workers.py); this is one of them
        self.workers = workers
        self.config: ServingConfig = load_config(self.config_path)  # ConfigError: refuse to start
        root = registry if registry is not None else self.config.registry
        if root is None:
            raise ConfigError(f"{self.config_path}: registry: not set here and no --registry given")
        self.registry = Registry(root)
        self.metrics = ServingMetrics()
        rt = self.config.runtime
        self.pool = ModelPool(
            self.registry,
            rt.warm_up_batch_sizes,
            on_loaded=lambda ref: self.metrics.reloads.labels(ref.model).inc(),
            on_failed=lambda ref: self.metrics.reload_failures.labels(ref.model).inc(),
            # several workers load the same versions: one copy of the fp32 weights between them
            share_weights=workers > 1,
        )
        self.worker = InferenceWorker(
            max_batch_candidates=rt.max_batch_candidates,
            max_forward_candidates=rt.max_forward_candidates,
            torch_threads=rt.torch_threads,
            shadow_queue=rt.shadow_queue,
            on_batch=self._observe_batch,
            on_shadow_drop=lambda: self.metrics.shadow.labels("-", "dropped").inc(),
        )
        self._model_info_labels: set[tuple[str, ...]] = set()
        self._config_sig = _file_signature(self.config_path)
        self.config_loaded_at = time.time()
        self.config_error: str | None = None
        self.started_at = time.time()
        self._check_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="registry-watcher", daemon=True)
        self._admin_env = self.config.admin.token_env

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the inference thread and the watcher (which loads the models first)."""
        # RuntimeError: already set in this process (e.g. a second app in one test process)
        log.info(
            apply_thread_policy(
                self.config.runtime.torch_threads, interop=self.config.runtime.interop_threads
            )
        )
        self.worker.start()
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        self.worker.stop()
        self._watcher.join(timeout=30)

    def _watch(self) -> None:
        self.check()
        self._freeze_heap(collect=True)
        while not self._stop.wait(self.config.runtime.reload_interval_s):
            try:
                before = self._loaded_versions()
                self.check()
                if self._loaded_versions() != before:
                    self._freeze_heap(collect=False)
            except Exception:  # the watcher must outlive any surprise; the next round retries
                log.exception("reload check failed")

    def _loaded_versions(self) -> list[tuple[str, str, str] | None]:
        return [
            (m.name, m.version, m.build) if m else None for m in map(self.pool.get, self.config.model_refs())
        ]

    @staticmethod
    def _freeze_heap(collect: bool) -> None:
        """Move every object alive now (torch, the models, their manifests: several hundred
        thousand) out of the garbage collector's reach. A full collection walks them all, about
        0.2 s holding the GIL, which every request in flight would wait for; they live as long
        as the process (or the model) anyway. At start the heap is collected first; after a
        reload it is not (a full collection is the pause this avoids), so the replaced model's
        few cyclic leftovers stay frozen: kilobytes per reload."""
        if collect:
            gc.collect()
        gc.freeze()
        log.info("garbage collector: %d objects frozen", gc.get_freeze_count())

    # ---- reload -------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        cfg = self.config
        return all(self.pool.get(v) is not None for _, v in cfg.variants())

    def check(self, force: bool = False) -> list[str]:
        """Re-read the config if it changed and bring every model reference up to date.
        Returns the errors of this round (empty when all is well)."""
        with self._check_lock:
            errors: list[str] = []
            sig = _file_signature(self.config_path)
            if sig is not None and (sig != self._config_sig or force):
                err = self._try_config(sig)
                if err:
                    errors.append(err)
            errors += self.pool.refresh(self.config.model_refs(), force=force)
            self._publish_model_info()
            return errors

    def _try_config(self, sig: tuple[int, int, str]) -> str | None:
        self._config_sig = sig
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            return self._reject_config(str(e))
        if new == self.config:
            return None
        errors = self.pool.refresh(new.model_refs())
        missing = [v.name for _, v in new.variants() if self.pool.get(v) is None]
        if missing:
            return self._reject_config(
                f"{self.config_path}: variants {missing} have no servable model ({'; '.join(errors)})"
            )
        for key in ("torch_threads", "interop_threads", "omp_wait"):
            if getattr(new.runtime, key) != getattr(self.config.runtime, key):
                log.warning("runtime.%s changed: it takes effect when the server restarts", key)
        self.config = new
        self.worker.max_batch_candidates = new.runtime.max_batch_candidates
        self.worker.max_forward_candidates = new.runtime.max_forward_candidates
        self.pool.prune(new.model_refs())
        self.config_loaded_at = time.time()
        self.config_error = None
        self.metrics.config_reloads.labels("applied").inc()
        log.info(
            "serving config reloaded: %s",
            ", ".join(f"{e}/{v.name}={v.describe()}" for e, v in new.variants()),
        )
        return None

    def _reject_config(self, message: str) -> str:
        self.config_error = message
        self.metrics.config_reloads.labels("rejected").inc()
        log.error("serving config rejected, the last good one stays in force: %s", message)
        return message

    def _publish_model_info(self) -> None:
        """One series at 1 per variant's loaded model. A series that no longer holds is removed;
        with several workers it is set to 0 instead: its value lives in a file that prometheus_client
        cannot remove a series from (serving/metrics.py), so a scrape would read the old version
        as 1."""
        g = self.metrics.model_info
        now: set[tuple[str, ...]] = set()
        for exp, v in self.config.variants():
            m = self.pool.get(v)
            if m is not None:
                now.add((exp, v.name, m.name, m.version, m.build))
        for labels in self._model_info_labels - now:
            if MULTIPROCESS:
                g.labels(*labels).set(0)
            else:
                g.remove(*labels)
        for labels in now:
            g.labels(*labels).set(1)
        self._model_info_labels = now

    def _observe_batch(self, requests: int, candidates: int, seconds: float) -> None:
        self.metrics.batch_requests.observe(requests)
        self.metrics.batch_candidates.observe(candidates)
        self.metrics.forward_seconds.observe(seconds)
        # also set on every scrape; here too, so a scrape answered by another worker reads this
        # worker's queue as of its last batch, not as of its last scrape
        self.metrics.queue_depth.set(self.worker.queued)

    # ---- admin --------------------------------------------------------------------------------
    def admin_ok(self, token: str | None) -> bool:
        want = os.environ.get(self._admin_env)
        return bool(want) and token is not None and hmac.compare_digest(token.encode(), want.encode())

    def worker_info(self) -> dict[str, int]:
        """Which process answered: with several workers a client's connections land on any."""
        return {"pid": os.getpid(), "workers": self.workers}

    def status(self, with_paths: bool = True) -> dict[str, Any]:
        """What is served (GET /models). `with_paths=False` leaves out every filesystem path,
        also inside error messages: what an unauthenticated caller may see."""
        status = self._status()
        if with_paths:
            return status
        places = {str(self.registry.root): "<registry>", str(self.registry.root.resolve()): "<registry>"}
        places |= {str(self.config_path): "<config>", str(self.config_path.resolve()): "<config>"}
        return redact_paths(status, places)

    def _status(self) -> dict[str, Any]:
        cfg = self.config
        variants = []
        for exp, v in cfg.variants():
            m = self.pool.get(v)
            variants.append(
                {
                    "experiment": exp,
                    "variant": v.name,
                    "weight": v.weight,
                    "ref": v.describe(),
                    "version": m.version if m else None,
                    "build": m.build if m else None,
                    "survival_curves": v.survival_curves,
                    "shadow": v.shadow.describe() if v.shadow else None,
                }
            )
        return {
            "ready": self.ready,
            **self.worker_info(),
            "registry": str(self.registry.root),
            "config": {
                "path": str(self.config_path),
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.config_loaded_at)),
                "last_error": self.config_error,
            },
            "variants": variants,
            "models": self.pool.status(),
        }

    # ---- scoring ------------------------------------------------------------------------------
    def route(self, req: ScoreRequest, admin_token: str | None) -> Assignment:
        cfg = self.config
        if req.variant is None:
            return assign(cfg, req.user_id)
        if not self.admin_ok(admin_token):
            raise RequestError("variant", "forcing a variant requires the admin token", status=403)
        found = cfg.find_variant(req.variant)
        if found is None:
            raise RequestError(
                "variant", f"unknown variant {req.variant!r}; known: {[v.name for _, v in cfg.variants()]}"
            )
        return Assignment(*found)

    async def score(
        self, body: bytes, content_type: str | None, admin_token: str | None = None
    ) -> ScoreResult:
        """Decode, route, check and score one request (RequestError for bad input, NotReady)."""
        cfg = self.config
        req = decode(body, content_type, cfg.runtime)
        a = self.route(req, admin_token)
        model = self.pool.get(a.variant)
        if model is None:
            raise NotReady(f"variant {a.variant.name}: no validated model loaded for {a.variant.describe()}")
        check_against_model(req, model, cfg.runtime)
        try:
            tasks = model.wanted(req.tasks)
        except ValueError as e:
            raise RequestError("tasks", str(e)) from None
        self.metrics.request_candidates.observe(req.num_candidates)
        job = Job(model=model, request=req, tasks=tasks)
        scores = await asyncio.wrap_future(self.worker.submit(job, cfg.runtime.max_queued_candidates))
        if a.variant.shadow is not None:
            self._shadow(a.variant, req, scores)
        return ScoreResult(
            model=model,
            experiment=a.experiment,
            variant=a.variant.name,
            tasks=tasks,
            scores=scores,
            num_candidates=req.num_candidates,
            survival_curves=a.variant.survival_curves,
        )

    def _shadow(self, variant: Variant, req: ScoreRequest, served: dict[str, np.ndarray]) -> None:
        shadow = variant.shadow
        assert shadow is not None
        if shadow.sample < 1.0 and random.random() >= shadow.sample:
            return
        model = self.pool.get(shadow)
        if model is None:
            self.metrics.shadow.labels(variant.name, "not_loaded").inc()
            return
        try:
            check_against_model(req, model, self.config.runtime)
        except RequestError:
            self.metrics.shadow.labels(variant.name, "incompatible").inc()
            return
        tasks = [t for t in model.tasks if t.kind == "binary" and t.name in served]

        def done(job: Job) -> None:
            try:
                got = job.future.result()
            except Exception as e:
                self.metrics.shadow.labels(variant.name, "error").inc()
                log.warning("shadow %s failed on a %s request: %s", shadow.describe(), variant.name, e)
                return
            self.metrics.shadow.labels(variant.name, "ok").inc()
            for t in tasks:
                diff = float(np.abs(got[t.name] - served[t.name]).mean())
                self.metrics.shadow_diff.labels(variant.name, t.name).observe(diff)
            log.debug("shadow %s v%s scored request %s", model.name, model.version, req.request_id or "-")

        self.worker.submit_shadow(Job(model=model, request=req, tasks=tasks), done)
