"""Small helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from recsys_mtl.exit_codes import EXIT_BAD_INPUT

log = logging.getLogger("recsys_mtl")


def _shipped_config(name: str) -> Path:
    """configs/NAME of the source checkout; for a non-editable install (the Docker image), where
    the package lives in site-packages, ./configs/NAME of the working directory."""
    checkout = Path(__file__).resolve().parents[2] / "configs" / name
    return checkout if checkout.is_file() else Path("configs") / name


# The shipped recipe and serving config.
DEFAULT_RECIPE = _shipped_config("ads_ranker.yaml")
DEFAULT_SERVING_CONFIG = _shipped_config("serving.yaml")


def add_recipe_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipe",
        help="recipe YAML (default: configs/ads_ranker.yaml)",
    )


def fail(err: Exception, code: int = EXIT_BAD_INPUT) -> int:
    """Report a user-facing error in one clear message (no traceback) and return its exit code."""
    print(f"error: {err}", file=sys.stderr)
    return code
