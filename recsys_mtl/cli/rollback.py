"""Take a model's current version out of service: point current.json back at an earlier version
and record the rolled-back one in REGISTRY/NAME/rollbacks.json, so the nightly job never promotes
it again (not even when it re-runs that version's date).

Without --to, the target is the most recent of the versions that were current before it
(current.json's history) that is older than it and not rolled back itself; else the newest such
version. Servers following `current` switch at their
next reload check (`POST /admin/reload` makes one check at once). The change is one atomic replace
of current.json under the registry's promote lock, like every promote. A rolled-back version stays
on disk; promoting it again by hand (`Registry.promote`) puts it back in service.

With --list, print the current version, the versions it would go back through and the
rolled-back ones, and change nothing.

Exit codes: 0 rolled back (or listed); 1 the registry could not be written; 2 bad arguments (no
such model or version, nothing to roll back to).

examples:
  recsys-mtl rollback --registry registry --name ads_ranker            # to the previous version
  recsys-mtl rollback --registry registry --name ads_ranker --to 2
  recsys-mtl rollback --registry registry --name ads_ranker --list
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from recsys_mtl.cli.common import fail
from recsys_mtl.exit_codes import EXIT_ERROR

if TYPE_CHECKING:
    from recsys_mtl.registry import Registry


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", required=True, type=Path, help="registry root directory")
    p.add_argument("--name", required=True, help="model name in the registry, e.g. ads_ranker")
    p.add_argument(
        "--to",
        metavar="VERSION",
        help="the version to make current (default: the one current before, skipping rolled-back ones)",
    )
    p.add_argument("--list", action="store_true", help="show current, history and rollbacks; change nothing")


def run(args: argparse.Namespace) -> int:
    from recsys_mtl.registry import Registry, RegistryError, RegistryWriteError, check_name

    reg = Registry(args.registry)
    try:
        check_name("model name", args.name)
        if args.to is not None:
            check_name("version", args.to)
        if not reg.versions(args.name):
            raise RegistryError(f"{reg.root}: no model {args.name!r} (models: {reg.names() or 'none'})")
        if args.list:
            _list(reg, args.name)
            return 0
        old, new = reg.rollback(args.name, args.to)
    except RegistryWriteError as e:
        return fail(e, code=EXIT_ERROR)
    except RegistryError as e:
        return fail(e)
    print(
        f"rolled back {args.name}: current v{old} -> v{new}; v{old} is recorded as rolled back "
        "(the nightly job will not promote it again)"
    )
    return 0


def _list(reg: Registry, name: str) -> None:
    record = reg.current_record(name)
    if record is None:
        print(f"{name}: no current version")
    else:
        before = ", ".join(f"v{v}" for v in record.get("history") or []) or "none recorded"
        print(
            f"{name}: current v{record['version']}, promoted {record.get('promoted_at')}; before it: {before}"
        )
    print(f"versions: {', '.join(reg.versions(name))}")
    for v, r in sorted(reg.rolled_back(name).items()):
        print(f"rolled back: v{v} at {r.get('rolled_back_at')} to v{r.get('to')} ({r.get('by')})")
