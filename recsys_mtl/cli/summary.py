"""Summarise a Parquet data directory: rows per day, label rate per task and, where the data has
`oracle_*` columns (synthetic data), the oracle's AUC / C-index: the best any model can reach.

Every file in the date range is first checked against the recipe (schema, types, empty files,
all-null labels); a bad file is reported by name and column.

example:
  recsys-mtl summary --data demo-out/data --recipe configs/ads_ranker.yaml
"""

from __future__ import annotations

import argparse
import json
import sys

from recsys_mtl.cli.common import DEFAULT_RECIPE, add_recipe_argument, fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="data directory holding dt=YYYY-MM-DD/ partitions")
    add_recipe_argument(p)
    p.add_argument("--start", help="first day (YYYY-MM-DD, inclusive); default: the first partition")
    p.add_argument("--end", help="last day (YYYY-MM-DD, inclusive); default: the last partition")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from recsys_mtl.data_summary import format_summary, summarize
    from recsys_mtl.partitions import DataError
    from recsys_mtl.recipe import RecipeError, load_recipe

    try:
        recipe = load_recipe(args.recipe or DEFAULT_RECIPE)
        s = summarize(recipe, args.data, args.start, args.end)
    except (RecipeError, DataError) as e:
        return fail(e)
    print(json.dumps(s, indent=2) if args.json else format_summary(s), file=sys.stdout)
    return 0
