"""The `recsys-mtl` command line. Each subcommand lives in its own module and imports its heavy
dependencies (torch, torchrec, the server) only when it runs, so `--help` is instant."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> module under recsys_mtl.cli that defines `add_arguments(parser)` and `run(args) -> int`
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("generate", "write synthetic Parquet data with ground-truth oracle columns"),
    "summary": ("summary", "print rows, label rates and oracle AUCs of a Parquet data directory"),
    "demo": ("demo", "run the main job end to end on generated data (what `make demo` runs)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys-mtl",
        description="Multi-task ranking on TorchRec: generate data, train, evaluate, export, serve.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        mod = importlib.import_module(f"recsys_mtl.cli.{module}")
        p = sub.add_parser(
            name,
            help=help_text,
            description=(mod.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our loggers speak at INFO; third-party ones (fbgemm announces every .so it loads on the root
    # logger) only at WARNING, unless --verbose.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("recsys_mtl").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
