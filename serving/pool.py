"""The models a server holds: load, validate, warm up, and swap them when the registry moves.

One `Slot` per model reference of the config (`ads_ranker@current`, `ads_ranker@current int8`,
`ads_ranker@3`, ...). `refresh` resolves each reference against the registry; when it points at a
version the slot does not hold, that version is loaded (sha256 checked before `torch.jit.load`),
validated (the manifest's golden request is re-scored: present, finite, equal to the exporter's
numbers) and warmed up at several batch sizes, and only then swapped in by one reference
assignment. A request that already holds the old `LoadedModel` finishes on it.

A version that fails is never served: the slot keeps its previous model (or stays empty), records
the error (shown by `GET /models`, logged, counted) and does not retry that same version until it
changes again or an admin forces a reload.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from recsys_mtl.registry import Registry, RegistryError
from recsys_mtl.scorer import LoadedModel, ModelLoadError, load_model
from serving.config import ModelRef

log = logging.getLogger("serving.pool")

RefKey = tuple[str, str, bool]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class Slot:
    ref: ModelRef
    model: LoadedModel | None = None
    loaded_at: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    failed_version: str | None = None  # not retried until the reference resolves elsewhere

    def status(self) -> dict[str, Any]:
        m = self.model
        return {
            "ref": self.ref.describe(),
            "model": self.ref.model,
            "follows": self.ref.version,
            "int8": self.ref.int8,
            "version": m.version if m else None,
            "path": str(m.path) if m else None,
            "build": m.build if m else None,
            "created_at": m.manifest.get("created_at") if m else None,
            "loaded_at": self.loaded_at,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


class ModelPool:
    """Loaded models by reference. `refresh` runs on one thread at a time (the watcher's lock)."""

    def __init__(
        self,
        registry: Registry,
        warm_up_batch_sizes: Sequence[int] = (1, 100, 500, 2000),
        on_loaded: Any = None,
        on_failed: Any = None,
    ) -> None:
        self.registry = registry
        self.warm_up_batch_sizes = tuple(warm_up_batch_sizes)
        self._slots: dict[RefKey, Slot] = {}
        self._lock = threading.Lock()
        self._on_loaded = on_loaded
        self._on_failed = on_failed

    def get(self, ref: ModelRef) -> LoadedModel | None:
        slot = self._slots.get(ref.key())
        return slot.model if slot else None

    def status(self) -> list[dict[str, Any]]:
        return [s.status() for s in list(self._slots.values())]

    def refresh(self, refs: Iterable[ModelRef], force: bool = False) -> list[str]:
        """Bring each reference to the version it resolves to now. Returns the errors of this call
        (one line per reference that could not be brought up to date)."""
        errors: list[str] = []
        with self._lock:
            for ref in refs:
                slot = self._slots.setdefault(ref.key(), Slot(ref))
                err = self._refresh_slot(slot, force)
                if err:
                    errors.append(err)
        return errors

    def prune(self, keep: Iterable[ModelRef]) -> None:
        """Drop slots no config reference needs (their models go once in-flight requests finish)."""
        wanted = {r.key() for r in keep}
        with self._lock:
            for k in [k for k in self._slots if k not in wanted]:
                log.info("unloading %s (no longer in the config)", self._slots[k].ref.describe())
                del self._slots[k]

    def _refresh_slot(self, slot: Slot, force: bool) -> str | None:
        ref = slot.ref
        try:
            version = self.registry.resolve(ref.model, ref.version)
        except RegistryError as e:
            return self._fail(slot, None, f"cannot resolve {ref.describe()}: {e}")
        if slot.model is not None and slot.model.version == version and not force:
            return None
        if slot.failed_version == version and not force:
            return slot.last_error
        t0 = time.perf_counter()
        try:
            model = load_model(self.registry, ref.model, version, int8=ref.int8)
            model.validate()
            model.warm_up(self.warm_up_batch_sizes)
        except (ModelLoadError, RegistryError) as e:
            return self._fail(slot, version, f"{ref.describe()} -> v{version} refused: {e}")
        except Exception as e:  # anything else while loading: still never served
            log.exception("unexpected failure loading %s v%s", ref.model, version)
            return self._fail(
                slot, version, f"{ref.describe()} -> v{version} refused: {type(e).__name__}: {e}"
            )
        old = slot.model
        slot.model = model  # the swap: one reference assignment
        slot.loaded_at = _now()
        slot.failed_version = None
        slot.last_error = None
        log.info(
            "serving %s -> %s v%s (%s) %s; validated and warmed up in %.1fs",
            ref.describe(),
            ref.model,
            version,
            model.build,
            f"replacing v{old.version}" if old else "first load",
            time.perf_counter() - t0,
        )
        if self._on_loaded is not None:
            self._on_loaded(ref)
        return None

    def _fail(self, slot: Slot, version: str | None, message: str) -> str:
        repeat = message == slot.last_error  # e.g. a reference that stays unresolvable: say it once
        slot.failed_version = version
        slot.last_error = message
        if repeat:
            return message
        slot.last_error_at = _now()
        still = f"; still serving v{slot.model.version}" if slot.model else "; nothing loaded for it"
        log.error("%s%s", message, still)
        if self._on_failed is not None:
            self._on_failed(slot.ref)
        return message
