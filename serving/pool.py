"""The models a server holds: load, validate, warm up, and swap them when the registry moves.

One `Slot` per model reference of the config (`ads_ranker@current`, `ads_ranker@current int8`,
`ads_ranker@3`, ...). A version is served whole or not at all, and the variants that follow a
reference move together:

1. `refresh` resolves each distinct reference (model, "current" / "latest" / pinned) once per
   round, so two variants that follow `current` cannot read current.json a moment apart and land
   on different versions.
2. The slots that resolve to the same (model, version) form a group. Every build the group needs
   (model.pt for fp32 slots, model.int8.pt for int8 ones) is loaded (sha256 checked before
   `torch.jit.load`), validated (the manifest's golden request is re-scored: present, finite,
   equal to the exporter's numbers) and warmed up at several batch sizes, before any slot moves.
   A build another slot already holds at that version is reused, not loaded twice.
3. If any needed build of the version fails, the version is refused for every slot of the group:
   they all keep their previous models (or stay empty), each records the error (shown by
   `GET /models`, logged, counted), and none retries that version until its reference resolves
   elsewhere or an admin forces a reload. So a corrupt model.pt cannot leave the fp32 variants on
   the old version while the int8 variants serve the same version's intact model.int8.pt.
4. Each group is swapped in as soon as its builds are loaded and validated, in one step: `get`
   reads one immutable mapping, replaced by a single reference assignment, so the slots of a group
   move together. Groups go one after another, and the pool keeps no reference to a replaced
   model: once the requests that hold it finish, it is freed before the next group loads, so a
   reload of several models needs room for one more model at a time, not for all of them. A
   request that already holds the old `LoadedModel` finishes on it.

A slot's error fields (`last_error`, `last_error_at`) clear as soon as it holds what its reference
resolves to.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from recsys_mtl.loader import LoadedModel, ModelLoadError, load_model
from recsys_mtl.registry import Registry, RegistryError
from serving.config import ModelRef

log = logging.getLogger("serving.pool")

RefKey = tuple[str, str, bool]
# (model name, version): what a group of slots moves to
Target = tuple[str, str]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _build(int8: bool) -> str:
    return "int8" if int8 else "primary"


@dataclass
class Slot:
    """What the pool knows about one reference besides its model: when it loaded, what failed."""

    ref: ModelRef
    loaded_at: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    failed_version: str | None = None  # not retried until the reference resolves elsewhere

    def clear_error(self) -> None:
        self.last_error = self.last_error_at = self.failed_version = None

    def status(self, m: LoadedModel | None) -> dict[str, Any]:
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


class _BuildFailed(Exception):
    """One build of a version failed to load, validate or warm up."""

    def __init__(self, build: str, error: Exception) -> None:
        super().__init__(f"its {build} build failed: {error}")


class ModelPool:
    """Loaded models by reference. `refresh` runs on one thread at a time (its own lock)."""

    def __init__(
        self,
        registry: Registry,
        warm_up_batch_sizes: Sequence[int] = (1, 100, 500, 2000),
        on_loaded: Callable[[ModelRef], Any] | None = None,
        on_failed: Callable[[ModelRef], Any] | None = None,
        share_weights: bool = False,
    ) -> None:
        """`share_weights`: fp32 builds' tensors are mapped from their weights.pt, so the
        processes of a server with several workers hold one copy (recsys_mtl/shared_weights.py)."""
        self.registry = registry
        self.share_weights = share_weights
        self.warm_up_batch_sizes = tuple(warm_up_batch_sizes)
        self._slots: dict[RefKey, Slot] = {}
        # Never mutated: replaced whole, so a reader sees one round's swaps all or none.
        self._models: Mapping[RefKey, LoadedModel] = MappingProxyType({})
        self._lock = threading.Lock()
        self._on_loaded = on_loaded
        self._on_failed = on_failed

    def get(self, ref: ModelRef) -> LoadedModel | None:
        return self._models.get(ref.key())

    def status(self) -> list[dict[str, Any]]:
        models = self._models
        return [s.status(models.get(k)) for k, s in list(self._slots.items())]

    def refresh(self, refs: Iterable[ModelRef], force: bool = False) -> list[str]:
        """Bring each reference to the version it resolves to now (see the module docstring).
        Returns the errors of this call (one line per reference that could not be brought up to
        date)."""
        with self._lock:
            slots = {r.key(): self._slots.setdefault(r.key(), Slot(r)) for r in refs}
            errors: list[str] = []
            groups: dict[Target, list[Slot]] = {}
            resolved: dict[tuple[str, str], str | RegistryError] = {}
            for slot in slots.values():
                ref = slot.ref
                if (ref.model, ref.version) not in resolved:  # once per round
                    try:
                        resolved[ref.model, ref.version] = self.registry.resolve(ref.model, ref.version)
                    except RegistryError as e:
                        resolved[ref.model, ref.version] = e
                v = resolved[ref.model, ref.version]
                if isinstance(v, RegistryError):
                    errors.append(self._fail(slot, None, f"cannot resolve {ref.describe()}: {v}"))
                else:
                    groups.setdefault((ref.model, v), []).append(slot)
            for target, group in groups.items():
                swapped: dict[RefKey, LoadedModel] = {}
                errors += self._bring_up(target, group, self._models, force, swapped)
                if swapped:
                    # the group's swap: one assignment, before the next group loads (item 4 above)
                    self._models = MappingProxyType({**self._models, **swapped})
                    for key in swapped:
                        if self._on_loaded is not None:
                            self._on_loaded(slots[key].ref)
                del swapped  # no reference to this group's models outlives its swap
            return errors

    def _bring_up(
        self,
        target: Target,
        group: list[Slot],
        models: Mapping[RefKey, LoadedModel],
        force: bool,
        swapped: dict[RefKey, LoadedModel],
    ) -> list[str]:
        """Load every build `group` needs from `target`, or none: fill `swapped`, or fail them all."""
        name, version = target

        def holds(s: Slot) -> bool:
            m = models.get(s.ref.key())
            return m is not None and m.version == version

        stale = [s for s in group if force or not holds(s)]
        if not stale:
            for s in group:
                s.clear_error()
            return []
        if not force and all(s.failed_version == version for s in stale):
            return [s.last_error or "" for s in stale]
        # builds the stale slots need; those fresh slots hold at this version are reused
        builds: dict[bool, LoadedModel | None] = {s.ref.int8: None for s in stale}
        if not force:
            for s in group:
                if holds(s) and s.ref.int8 in builds:
                    builds[s.ref.int8] = models[s.ref.key()]
        t0 = time.perf_counter()
        try:
            loaded = {int8: m or self._load(name, version, int8) for int8, m in builds.items()}
        except _BuildFailed as e:
            return [self._fail(s, version, f"{s.ref.describe()} -> v{version} refused: {e}") for s in stale]
        seconds = time.perf_counter() - t0
        now = _now()
        for s in stale:
            old = models.get(s.ref.key())
            swapped[s.ref.key()] = loaded[s.ref.int8]
            s.loaded_at = now
            log.info(
                "serving %s -> %s v%s (%s) %s; validated and warmed up with the version's other "
                "builds in %.1fs",
                s.ref.describe(),
                name,
                version,
                _build(s.ref.int8),
                f"replacing v{old.version}" if old else "first load",
                seconds,
            )
        for s in group:
            s.clear_error()
        return []

    def _load(self, name: str, version: str, int8: bool) -> LoadedModel:
        """One build of a version, loaded, validated and warmed up; _BuildFailed otherwise."""
        try:
            model = load_model(self.registry, name, version, int8=int8, share_weights=self.share_weights)
            model.validate()
            model.warm_up(self.warm_up_batch_sizes)
        except (ModelLoadError, RegistryError) as e:
            raise _BuildFailed(_build(int8), e) from e
        except Exception as e:  # anything else while loading: still never served
            log.exception("unexpected failure loading %s v%s (%s)", name, version, _build(int8))
            raise _BuildFailed(_build(int8), RuntimeError(f"{type(e).__name__}: {e}")) from e
        return model

    def prune(self, keep: Iterable[ModelRef]) -> None:
        """Drop slots no config reference needs (their models go once in-flight requests finish)."""
        wanted = {r.key() for r in keep}
        with self._lock:
            gone = [k for k in self._slots if k not in wanted]
            for k in gone:
                log.info("unloading %s (no longer in the config)", self._slots[k].ref.describe())
                del self._slots[k]
            self._models = MappingProxyType({k: m for k, m in self._models.items() if k not in gone})

    def _fail(self, slot: Slot, version: str | None, message: str) -> str:
        repeat = message == slot.last_error  # e.g. a reference that stays unresolvable: say it once
        slot.failed_version = version
        slot.last_error = message
        if repeat:
            return message
        slot.last_error_at = _now()
        model = self._models.get(slot.ref.key())
        still = f"; still serving v{model.version}" if model else "; nothing loaded for it"
        log.error("%s%s", message, still)
        if self._on_failed is not None:
            self._on_failed(slot.ref)
        return message
