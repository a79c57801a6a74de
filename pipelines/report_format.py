"""How the nightly report writes numbers and free-form values as text, in its page
(`pipelines.report`) and its plots' legends (`pipelines.report_plots`). Undefined numbers (NaN, or
null in the JSON metrics) read as "n/a"."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def is_missing(value: Any) -> bool:
    """None or a non-finite number: the metrics' "undefined" (JSON metrics hold null, raw ones NaN)."""
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return not math.isfinite(float(value))
    return False


def num(value: Any, digits: int = 4, signed: bool = False) -> str:
    """A number for a table cell; "n/a" when undefined."""
    if is_missing(value):
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):+,}" if signed else f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{float(value):+.{digits}f}" if signed else f"{float(value):.{digits}f}"
    return str(value)


def value_text(value: Any, limit: int = 300, none: str = "n/a") -> str:
    """Any free-form value (validation results are not typed) as short plain text; `none` is what
    None reads as (a missing bound means "unbounded", not "undefined")."""
    if isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {value_text(v, limit, none)}" for k, v in value.items()) + "}"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(value_text(v, limit, none) for v in value) + "]"
    elif isinstance(value, np.ndarray):
        text = value_text(value.tolist(), limit, none)
    elif value is None:
        text = none
    elif isinstance(value, float | np.floating) and not is_missing(value):
        text = f"{float(value):.6g}"
    else:
        text = num(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
