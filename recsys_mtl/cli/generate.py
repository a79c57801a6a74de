"""Write synthetic ad-impression data with ground truth, as day-partitioned Parquet.

One row is one impression of an ad creative to a user, with the columns the ads_ranker recipe reads:
user, creative and context features, behaviour sequences, the click and conversion labels, the
creative's discontinuation labels on a daily (14 days) and a weekly (16 weeks) grid, and `oracle_*`
columns holding the true probabilities and hazards (for evaluation only, never features); and the
creative's content vector `creative_content` (what an image/text encoder would store per creative).

    recsys-mtl generate --out data/ --rows 1000000 --days 7 --seed 0

writes data/dt=2026-01-01/part-00000.parquet ... and data/_synth.json (config and calibration), then
prints a JSON summary. The same arguments give byte-identical files. A non-empty --out is refused
(exit code 2) unless --overwrite; files are written beside --out and renamed into place at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_mtl.exit_codes import EXIT_BAD_INPUT

if TYPE_CHECKING:
    from recsys_mtl.synth import SynthConfig


@cache
def _config_defaults() -> dict[str, Any]:
    # imported when help is printed or the command runs, not when the parser is built, so the
    # rest of the CLI does not pay for numpy and pyarrow
    from recsys_mtl.synth import SynthConfig

    return {f.name: f.default for f in dataclasses.fields(SynthConfig)}


class _HelpWithConfigDefaults(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default as SynthConfig defines it (the one source of the defaults)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        defaults = _config_defaults()
        if action.dest in defaults and defaults[action.dest] is not None:
            return f"{text} (default: {defaults[action.dest]})"
        return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `generate` options. Defaults are None here and come from SynthConfig at run time."""
    parser.formatter_class = _HelpWithConfigDefaults
    parser.add_argument("--out", type=Path, required=True, help="output directory (DIR/dt=YYYY-MM-DD/...)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    size = parser.add_argument_group("size")
    size.add_argument("--rows", type=int, help="impressions in total, split evenly over the days")
    size.add_argument("--days", type=int, help="days, one dt= partition each")
    size.add_argument("--start-date", dest="start_date", help="first day, YYYY-MM-DD")
    size.add_argument("--rows-per-file", dest="rows_per_file", type=int, help="rows per part file")
    size.add_argument("--seed", type=int, help="random seed; same seed and arguments, same bytes")
    vocab = parser.add_argument_group("vocabulary")
    vocab.add_argument("--users", type=int, help="distinct users")
    vocab.add_argument("--creatives", type=int, help="distinct ad creatives")
    vocab.add_argument("--advertisers", type=int, help="distinct advertisers")
    vocab.add_argument("--campaigns", type=int, help="distinct campaigns (each of one advertiser)")
    vocab.add_argument("--categories", type=int, help="creative categories")
    vocab.add_argument("--latent-dim", dest="latent_dim", type=int, help="latent taste dimension")
    vocab.add_argument("--click-seq-len", dest="click_seq_len", type=int, help="max clicked_items length")
    vocab.add_argument("--conv-seq-len", dest="conv_seq_len", type=int, help="max converted_items length")
    tasks = parser.add_argument_group("tasks")
    tasks.add_argument("--rho", type=float, help="CTR/CVR task relatedness in [-1, 1] (< 0: conflicting)")
    tasks.add_argument("--ctr", type=float, help="target mean click-through rate")
    rarity = tasks.add_mutually_exclusive_group()
    rarity.add_argument(
        "--conversion-rate",
        dest="conversion_rate",
        type=float,
        help="target mean P(conversion | click); e.g. 0.01 for a rare, sparse task",
    )
    rarity.add_argument(
        "--cvr-bias", dest="cvr_bias", type=float, help="explicit CVR logit bias instead of --conversion-rate"
    )
    content = parser.add_argument_group(
        "creative content",
        "creative_content: a vector per creative, as an image/text encoder would store it, made from\n"
        "the creative's hidden attributes (latent vector, format, category and quality effects,\n"
        "discontinuation drivers) by a fixed random projection plus independent noise",
    )
    content.add_argument(
        "--content-dim",
        dest="content_dim",
        type=int,
        help="dimensions of the creative_content vector; 0 writes no creative_content column",
    )
    content.add_argument(
        "--content-signal",
        dest="content_signal",
        type=float,
        help="share of each dimension's variance from the creative's attributes, in [0, 1] (0: pure noise)",
    )
    content.add_argument(
        "--content-missing-rate",
        dest="content_missing_rate",
        type=float,
        help="share of creatives, chosen by the seed, whose creative_content is null",
    )
    life = parser.add_argument_group("creative lifetimes")
    life.add_argument(
        "--label-follow-up-days",
        dest="label_follow_up_days",
        type=float,
        help="days after the last day during which creative stops still reach the survival labels",
    )
    life.add_argument("--hazard-base", dest="hazard_base", type=float, help="daily hazard logit at launch")


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    """The SynthConfig of the parsed options: SynthConfig's defaults, overridden by the given ones."""
    from recsys_mtl.synth import SynthConfig

    given = {
        name: getattr(args, name) for name in _config_defaults() if getattr(args, name, None) is not None
    }
    return SynthConfig(**given)


def run(args: argparse.Namespace) -> int:
    """Generate; exit 2 on bad arguments or a non-empty --out without --overwrite."""
    from recsys_mtl.synth import OutputExistsError, generate

    try:
        cfg = config_from_args(args)
        summary = generate(cfg, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    except OutputExistsError as e:
        print(f"recsys-mtl generate: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as e:
        print(f"recsys-mtl generate: invalid arguments: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(summary, sort_keys=True))
    return 0
