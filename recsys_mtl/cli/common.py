"""Small helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("recsys_mtl")

# The shipped recipe: configs/ads_ranker.yaml in a source checkout.
DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "ads_ranker.yaml"
DEFAULT_SERVING_CONFIG = DEFAULT_RECIPE.with_name("serving.yaml")

# Exit codes: 0 ok, 2 bad input (recipe, data, arguments). Later stages add their own.
EXIT_BAD_INPUT = 2


def add_recipe_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipe",
        help=f"recipe YAML (default: {DEFAULT_RECIPE.relative_to(DEFAULT_RECIPE.parents[1])})",
    )


def fail(err: Exception, code: int = EXIT_BAD_INPUT) -> int:
    """Report a user-facing error in one clear message (no traceback) and return its exit code."""
    print(f"error: {err}", file=sys.stderr)
    return code
