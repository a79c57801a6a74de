"""Exit codes of `recsys-mtl`, the nightly job and its scheduler: defined here once.

The subcommands use 0, 1 and 2; `recsys-mtl nightly` (pipelines/nightly.py) adds 3, 4 and 5;
scripts/nightly_scheduler.py logs each code as an outcome and adds 75. The table with what an
operator does about each is docs/DESIGN.md, "Exit codes".

Standard library only: the scheduler imports it without torch or any other dependency.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0  # done: published and promoted, or nothing to do (the date was done already)
    ERROR = 1  # internal error, or the filesystem refused a write; a nightly re-run resumes
    BAD_INPUT = 2  # bad arguments, recipe or data (also a nightly training run that exited 2)
    DATA = 3  # nightly: the day failed validation, or no training days exist
    GATE = 4  # nightly: the quality gate failed; nothing published
    CONFLICT = 5  # nightly: current changed while the job ran (promote or rollback); nothing published
    LOCKED = 75  # scheduler --once: another run holds the lock (EX_TEMPFAIL: try again later)


EXIT_OK = ExitCode.OK
EXIT_ERROR = ExitCode.ERROR
EXIT_BAD_INPUT = ExitCode.BAD_INPUT
EXIT_DATA = ExitCode.DATA
EXIT_GATE = ExitCode.GATE
EXIT_CONFLICT = ExitCode.CONFLICT
EXIT_LOCKED = ExitCode.LOCKED
