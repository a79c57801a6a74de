"""What a fuzz generator knows about the model, and what it produces.

`Column` and `ModelShape` (the model's input columns, tasks and the server limits the generators
aim at, read from a loaded model), `Case` (one request to send and what a correct server may
answer to it), the expected statuses `OK` and `TOO_LARGE`, the draw helpers `pick` and `one_in`,
and the JSON and Arrow content-type headers. Every other module of `tests.fuzz` builds on these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from recsys_mtl.loader import LoadedModel
from serving.request import ARROW_STREAM, JSON


@dataclass(frozen=True)
class Column:
    """One raw input column of the model, as a client sends it."""

    name: str
    kind: str  # "id" | "multi_id" | "sequence" | "dense" | "vector"
    value_type: str  # "int" | "string" (categorical kinds)
    per_request: bool  # a user or context feature: normally sent once, in `features`
    vocabulary: tuple[Any, ...] | None
    dim: int | None = None  # a vector's values
    missing: str = "zeros"  # a vector's `missing`: "zeros" (null allowed) or "error"

    @property
    def is_list(self) -> bool:
        return self.kind in ("multi_id", "sequence")


@dataclass(frozen=True, repr=False)
class ModelShape:
    """The model's input columns and tasks plus the server limits the generators aim at."""

    columns: tuple[Column, ...]
    user_column: str | None
    tasks: tuple[str, ...]
    binary_tasks: tuple[str, ...]
    max_candidates: int
    max_body_bytes: int

    @classmethod
    def of(cls, model: LoadedModel, max_candidates: int, max_body_bytes: int) -> ModelShape:
        columns: dict[str, Column] = {}
        for f in model.transform.features:
            columns.setdefault(
                f.source,
                Column(
                    f.source,
                    f.kind,
                    f.value_type,
                    f.group in ("user", "context"),
                    tuple(f.vocabulary) if f.vocabulary is not None else None,
                    f.dim,
                    f.missing,
                ),
            )
        user_col = model.manifest.get("recipe", {}).get("data", {}).get("user_column", "user_id")
        return cls(
            columns=tuple(columns.values()),
            user_column=user_col if user_col in columns else None,
            tasks=tuple(t.name for t in model.tasks),
            binary_tasks=tuple(t.name for t in model.tasks if t.kind == "binary"),
            max_candidates=max_candidates,
            max_body_bytes=max_body_bytes,
        )

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def vectors(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "vector"]

    def __repr__(self) -> str:
        return f"ModelShape({len(self.columns)} columns, max_candidates={self.max_candidates})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # Hypothesis prints dataclasses field by field
        p.text(repr(self))


@dataclass(repr=False)
class Case:
    """One request to send, and what a correct server may answer to it.

    `candidates`: the candidate counts a 2xx may report (None: not known, e.g. after random byte
    overwrites). `expect`: the correct statuses (200 for a valid request, 413 for a body over
    the limit; 413 or 422 where a server may refuse a bigger-than-allowed body for what its schema
    declares before it inflates it), None when any status the contract allows will do.
    `error_field`: the `error.field` a correct 4xx names (None: any), e.g. a broken vector's column.
    """

    generator: str
    body: bytes
    headers: dict[str, str]
    candidates: frozenset[int] | None = None
    expect: frozenset[int] | None = None
    chunked: bool = False  # sent with Transfer-Encoding: chunked (no Content-Length)
    note: str = ""  # how the body was made, for the failure report
    steps: list[str] = field(default_factory=list)
    error_field: str | None = None

    def describe(self, limit: int = 600) -> str:
        """How the case was made, its headers, and the first `limit` bytes of its body."""
        head = f"[{self.generator}] {self.note}{'; ' if self.steps else ''}{'; '.join(self.steps)}"
        if limit <= 0:
            return head
        body = self.body if len(self.body) <= limit else self.body[:limit] + b"..."
        return f"{head}\n  headers={self.headers!r} chunked={self.chunked} ({len(self.body)} bytes) {body!r}"

    def __repr__(self) -> str:
        return f"Case({self.describe(300)})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # Hypothesis prints dataclasses field by field
        p.text(repr(self))


OK = frozenset({200})
TOO_LARGE = frozenset({413})


def pick(draw: st.DrawFn, items: Sequence[Any]) -> Any:
    """One of `items` (which depend on earlier draws: no strategy repr of a big list)."""
    return items[draw(st.integers(0, len(items) - 1))]


def one_in(k: int) -> st.SearchStrategy[bool]:
    """True about once in `k` draws (Hypothesis draws small integers far more often than 1/k)."""
    return st.sampled_from([False] * (k - 1) + [True])


def _json_headers() -> dict[str, str]:
    return {"content-type": JSON}


def _arrow_headers() -> dict[str, str]:
    return {"content-type": ARROW_STREAM}
