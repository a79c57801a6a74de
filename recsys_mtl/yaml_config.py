"""Reading a YAML config file and reporting pydantic validation errors by field path: shared by
recipes (recsys_mtl.recipe) and serving configs (serving.config), so both say the same things in
the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


def read_yaml(path: str | Path, what: str, error: type[ValueError]) -> Any:
    """The parsed YAML document; `error` (naming the file) when it is unreadable or not YAML."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise error(f"cannot read {what} {p}: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{what} {p} is not valid YAML: {e}") from None


def field_errors(err: ValidationError) -> list[str]:
    """One "field.path: what is wrong (got value)" line per error."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        got_s = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"{path}: {msg}{got_s}")
    return lines
