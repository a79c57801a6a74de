"""The `recsys-mtl` command line. Each subcommand lives in its own module and imports its heavy
dependencies (torch, torchrec, the server) only when it runs, so `--help` is instant."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from recsys_mtl.threads import configure_openmp, omp_wait_from_file

# subcommand -> module under recsys_mtl.cli that defines `add_arguments(parser)` and `run(args) -> int`
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("generate", "write synthetic Parquet data with ground-truth oracle columns"),
    "summary": ("summary", "print rows, label rates and oracle AUCs of a Parquet data directory"),
    "train": ("train", "train a model from a recipe on Parquet days, sharded with TorchRec"),
    "evaluate": ("evaluate", "evaluate a trained run on Parquet days: AUC, GAUC, calibration, C-index"),
    "export": ("export", "export a trained run to the model registry as TorchScript (fp32 or int8)"),
    "predict": ("predict", "write per-row scores of every task to Parquet, from a run or a registry version"),
    "serve": ("serve", "serve registry models over HTTP: POST /score, A/B variants, hot reload"),
    "nightly": ("nightly", "the nightly job: validate, train, gate against serving, publish, report"),
    "rollback": ("rollback", "point a model's current version back and record it as rolled back"),
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


class _DropLibraryChatter(logging.Filter):
    """TorchRec and FBGEMM log planner hints and load notices at WARNING, some on the root logger;
    a user of our CLI cannot act on them. Errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = any(part in record.pathname for part in ("/torchrec/", "/fbgemm_gpu/", "/torch/"))
        return record.levelno >= logging.ERROR or not noisy


def quiet_third_party() -> None:
    for h in logging.getLogger().handlers:
        h.addFilter(_DropLibraryChatter())
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torchrec\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(torchrec|fbgemm_gpu)\..*")
    warnings.filterwarnings("ignore", message=r".*is_fx_tracing.*")
    # FBGEMM's CPU embedding op has no autograd kernel registered; TorchRec handles its backward.
    warnings.filterwarnings("ignore", message=r".*an autograd kernel was not registered.*")
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args._argv = list(argv) if argv is not None else sys.argv[1:]  # `train --nproc` re-launches it
    # Our loggers speak at INFO; third-party ones (fbgemm announces every .so it loads on the root
    # logger) only at WARNING, unless --verbose.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for ours in ("recsys_mtl", "serving", "pipelines"):
        logging.getLogger(ours).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        quiet_third_party()
    # before any subcommand imports torch: libgomp reads how to wait when it loads (threads.py); the
    # recipe's `training.omp_wait` or the serving config's `runtime.omp_wait` may say how
    setting = omp_wait_from_file(getattr(args, "recipe", None), "training") or omp_wait_from_file(
        getattr(args, "config", None), "runtime"
    )
    logging.getLogger("recsys_mtl.threads").debug(configure_openmp(setting=setting))
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
