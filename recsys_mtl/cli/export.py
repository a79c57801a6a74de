"""Export a trained run to the model registry as TorchScript: REGISTRY/NAME/VERSION/ with model.pt
and manifest.json (recipe, feature transform with its dense statistics, tasks and grids, training
data range, held-out metrics, sha256 of model.pt, versions). The version directory appears
atomically; VERSION defaults to the next integer (1, 2, ...). current.json, which servers follow,
changes only with --promote.

The exported model is checked against the trained one before it is published (batch sizes 1, 7,
64); --int8 quantizes the embedding tables to int8 (TorchRec inference quantization).

Exit codes: 0 published; 1 the export failed: the artifact does not reproduce the model, or the
registry's filesystem refused a write (full disk, quota, read-only, I/O error; the message names
the registry path), and nothing was published; 2 bad arguments (a missing run, a bad name, an
existing --version).

examples:
  recsys-mtl export --run runs/home --registry registry --name ads_ranker --promote
  recsys-mtl export --run runs/home --registry registry --name ads_ranker --int8 --version 2026-01-07
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recsys_mtl.cli.common import fail
from recsys_mtl.exit_codes import EXIT_ERROR


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, type=Path, help="training run directory (run.json, checkpoints/)")
    p.add_argument(
        "--registry", required=True, type=Path, help="registry root directory (created if missing)"
    )
    p.add_argument("--name", required=True, help="model name in the registry, e.g. ads_ranker")
    p.add_argument("--int8", action="store_true", help="int8 embedding tables (dense layers stay fp32)")
    p.add_argument(
        "--also-int8",
        action="store_true",
        help="with an fp32 export, also write an int8 build of the same weights (model.int8.pt), "
        "which serving variants switch on with their `int8` flag",
    )
    p.add_argument("--promote", action="store_true", help="make the new version current (current.json)")
    p.add_argument("--version", help="explicit version name (must be new); default: the next integer")


def run(args: argparse.Namespace) -> int:
    from recsys_mtl.registry import RegistryError, check_name

    # Cheap checks first: a typo should not wait for torch to import.
    try:
        check_name("model name", args.name)
        if args.version is not None:
            check_name("version", args.version)
    except RegistryError as e:
        return fail(e)
    if not args.run.is_dir():
        return fail(FileNotFoundError(f"{args.run}: run directory does not exist"))
    from recsys_mtl.run import RUN_FILE  # no torch: still a cheap check

    if not (args.run / RUN_FILE).is_file():
        return fail(FileNotFoundError(f"{args.run}: not a training run (no {RUN_FILE})"))

    from recsys_mtl.export import ExportError, export_run
    from recsys_mtl.registry import RegistryWriteError

    try:
        res = export_run(
            args.run,
            args.registry,
            args.name,
            int8=args.int8,
            int8_companion=args.also_int8,
            promote=args.promote,
            version=args.version,
        )
    except (ExportError, RegistryWriteError) as e:  # not the arguments: the model or the disk
        return fail(e, code=EXIT_ERROR)
    except (OSError, ValueError) as e:  # RunError, RegistryError, RecipeError
        return fail(e)
    print(
        f"exported {res.name} version {res.version} ({'int8' if res.int8 else 'fp32'}, "
        f"{res.bytes / 1e6:.2f} MB, sha256 {res.sha256[:12]}, max |diff| vs eager {res.max_abs_diff:.2g}, "
        f"{res.seconds:.1f}s) -> {res.path}"
    )
    from recsys_mtl.registry import Registry

    note = "" if res.promoted else " (unchanged; --promote switches it)"
    print(f"current: {Registry(args.registry).current(args.name) or 'none'}{note}")
    return 0
