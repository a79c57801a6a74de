"""The serving config (YAML): runtime settings, A/B experiments and their variants' flags.

```yaml
registry: registry            # optional; `recsys-mtl serve --registry` wins
runtime: {torch_threads: 1, max_batch_candidates: 4096, max_candidates: 2000, ...}   # + limits
admin: {token_env: RECSYS_MTL_ADMIN_TOKEN, protect_introspection: false}
experiments:
  - name: int8_embeddings
    salt: "2026-11-int8"      # change it to re-draw every user's assignment
    unit: user_id
    traffic: 1.0              # share of units that enter this experiment (others: the next one)
    variants:
      - {name: control, weight: 50, model: ads_ranker, version: current}
      - {name: int8, weight: 50, model: ads_ranker, version: current, int8: true}
default: {name: default, model: ads_ranker}   # who is in no experiment
```

A variant names a registry model and a version reference ("current" follows current.json and hot
reloads; "latest" follows the highest version; anything else pins that version) plus flags:
`int8` (serve the version's int8 build), `survival_curves` (return per-interval hazards and
survival curves, not only the scalar risk) and `shadow` (a second model scored on the same requests
in the background; its scores are metered and logged, never returned).

Validation is strict (unknown keys are errors) and every error names the field's path, so a typo
in a config that is being hot-reloaded is rejected with its reason while the last good config
stays in force (README, "Serving"; docs/OPERATIONS.md).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recsys_mtl.registry import RegistryError, check_name
from recsys_mtl.threads import OMP_WAIT_PATTERN
from recsys_mtl.yaml_config import field_errors, read_yaml


class ConfigError(ValueError):
    """A serving config that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Strict):
    """A registry model and which of its versions to serve."""

    model: str = Field(description="registry model name")
    version: str = Field(
        default="current",
        description='"current" (follows current.json), "latest" (highest version) or a pinned version',
    )
    int8: bool = Field(default=False, description="serve the int8 build of the version")

    @field_validator("model")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return check_name("model name", v)
        except RegistryError as e:
            raise ValueError(str(e)) from None

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> str:
        v = str(v)
        if v in ("current", "latest"):
            return v
        try:
            return check_name("version", v)
        except RegistryError as e:
            raise ValueError(str(e)) from None

    @property
    def follows(self) -> bool:
        """True when the served version can change without a config change."""
        return self.version in ("current", "latest")

    def key(self) -> tuple[str, str, bool]:
        return (self.model, self.version, self.int8)

    def describe(self) -> str:
        return f"{self.model}@{self.version}{' int8' if self.int8 else ''}"


class ShadowRef(ModelRef):
    """A model scored in the background on the variant's requests; results are metered, not returned."""

    sample: float = Field(default=1.0, gt=0.0, le=1.0, description="share of requests shadow-scored")


class Variant(ModelRef):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    weight: float = Field(default=1.0, gt=0.0, description="relative share of the experiment's units")
    survival_curves: bool = Field(
        default=True, description="return hazards and survival curves per interval, not only the risk"
    )
    shadow: ShadowRef | None = None


class Experiment(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    salt: str = Field(min_length=1, description="hash salt: a new salt re-draws all assignments")
    unit: Literal["user_id"] = "user_id"
    traffic: float = Field(default=1.0, gt=0.0, le=1.0, description="share of units in this experiment")
    variants: list[Variant] = Field(min_length=1)

    @field_validator("variants")
    @classmethod
    def _unique(cls, v: list[Variant]) -> list[Variant]:
        dup = [n for n, c in Counter(x.name for x in v).items() if c > 1]
        if dup:
            raise ValueError(f"duplicate variant names: {dup}")
        return v


class Runtime(_Strict):
    torch_threads: int = Field(
        default=1, ge=1, le=256, description="intra-op threads of the forward (cores - 1 is a good start)"
    )
    interop_threads: int = Field(default=1, ge=1, le=64)
    omp_wait: str = Field(
        default="short-spin",
        pattern=OMP_WAIT_PATTERN,
        description="how OpenMP threads wait (recsys_mtl/threads.py): short-spin, passive, libgomp, inherit "
        "or a spin count; read by `recsys-mtl serve` before torch loads, so a reload does not change it",
    )
    max_candidates: int = Field(default=2000, ge=1, description="candidates per request")
    max_batch_candidates: int = Field(
        default=4096, ge=1, description="concurrent requests are merged into one forward up to this"
    )
    max_forward_candidates: int = Field(
        default=512,
        ge=1,
        description="a merged batch larger than this runs as several forwards of this size, and requests "
        "that arrive meanwhile are served between them: nobody waits behind a whole large request",
    )
    reload_interval_s: float = Field(
        default=2.0, gt=0.0, description="how often current.json and the config file are checked"
    )
    warm_up_batch_sizes: list[int] = Field(default=[1, 100, 500, 2000], min_length=1)
    shadow_queue: int = Field(default=64, ge=1, description="pending shadow jobs before new ones are dropped")

    # ---- request limits: each enforced before the work it bounds, each a 4xx naming the field ----
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="request body bytes (413); for a compressed Arrow body, its decompressed size",
    )
    max_json_values: int = Field(
        default=100_000,
        ge=100,
        description="JSON values (counted from the body's commas and brackets before parsing; 413): "
        "parsing cost grows with the number of values, not the bytes",
    )
    max_id_bytes: int = Field(
        default=256, ge=8, le=65536, description="UTF-8 bytes of one string id, user_id included (422)"
    )
    max_list_length: int = Field(
        default=1000, ge=1, description="values in one list (a sequence or multi-id feature) of one row (422)"
    )
    max_request_id_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="UTF-8 bytes of all string ids of one request (413)"
    )
    max_vector_values: int = Field(
        default=262_144,
        ge=1024,
        description="floats of all vector features of one request, as the transform will hold them "
        "(candidates x dim per vector feature; a request-level vector counts once per candidate; 413). "
        "The default (1 MiB of float32) is 2,000 candidates x 131 floats: raise it for wider vectors",
    )

    # ---- back-pressure: slow or idle clients never delay other requests ----
    header_timeout_s: float = Field(
        default=10.0, gt=0.0, description="a connection must send a complete request head within this"
    )
    body_timeout_s: float = Field(
        default=10.0, gt=0.0, description="a request body must arrive completely within this (408)"
    )
    max_connections: int = Field(
        default=512, ge=1, description="open connections; more are answered 503 with Retry-After and closed"
    )
    max_queued_candidates: int = Field(
        default=16384,
        ge=1,
        description="candidates waiting for the inference thread; a request beyond it gets 503 + Retry-After",
    )
    retry_after_s: int = Field(default=1, ge=1, le=3600, description="Retry-After of an overload 503")


class Admin(_Strict):
    token_env: str = Field(
        default="RECSYS_MTL_ADMIN_TOKEN",
        description="environment variable holding the admin token; unset = admin actions disabled",
    )
    protect_introspection: bool = Field(
        default=False,
        description="true: /models, /metrics, /docs and /openapi.json need the admin token. false: they "
        "are open, and /models shows filesystem paths only to a request with the token",
    )


class ServingConfig(_Strict):
    registry: str | None = None
    runtime: Runtime = Field(default_factory=Runtime)
    admin: Admin = Field(default_factory=Admin)
    experiments: list[Experiment] = Field(default_factory=list)
    default: Variant | None = None

    @model_validator(mode="after")
    def _check(self) -> ServingConfig:
        names = [e.name for e in self.experiments]
        dup = [n for n, c in Counter(names).items() if c > 1]
        if dup:
            raise ValueError(f"duplicate experiment names: {dup}")
        everyone_assigned = any(e.traffic >= 1.0 for e in self.experiments)
        if self.default is None and not everyone_assigned:
            raise ValueError(
                "`default` is required: no experiment takes all traffic (traffic: 1.0), so some users "
                "would have no variant"
            )
        return self

    def variants(self) -> list[tuple[str, Variant]]:
        """(experiment name, variant) for every variant, `default` as experiment "default"."""
        out = [(e.name, v) for e in self.experiments for v in e.variants]
        if self.default is not None:
            out.append(("default", self.default))
        return out

    def find_variant(self, name: str) -> tuple[str, Variant] | None:
        return next(((e, v) for e, v in self.variants() if v.name == name), None)

    def model_refs(self) -> list[ModelRef]:
        """Every model the config needs loaded (variants and shadows), without repeats."""
        refs: dict[tuple[str, str, bool], ModelRef] = {}
        for _, v in self.variants():
            base = ModelRef(model=v.model, version=v.version, int8=v.int8)
            refs.setdefault(base.key(), base)
            if v.shadow is not None:
                s = ModelRef(model=v.shadow.model, version=v.shadow.version, int8=v.shadow.int8)
                refs.setdefault(s.key(), s)
        return list(refs.values())


def parse_config(data: Any, source: str = "<config>") -> ServingConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ServingConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {'; '.join(field_errors(e))}") from None


def load_config(path: str | Path) -> ServingConfig:
    """Read and validate a serving config file (ConfigError names the file and the field)."""
    return parse_config(read_yaml(path, "serving config", ConfigError), str(path))
