#!/usr/bin/env python3
"""Run the nightly job for yesterday (UTC) every night at a fixed UTC time, or once.

    nightly_scheduler.py [--once] [--date YYYY-MM-DD] [--at HH:MM] [--lock FILE] [--no-catch-up] \\
        -- recsys-mtl nightly --recipe R --data D --registry REG --name NAME --work W

The command after `--` is run with `--date YYYY-MM-DD` appended (and, before it, the words of
$NIGHTLY_EXTRA_ARGS, e.g. `--force`). Its exit code is logged with what it means:

    0  ok: published and promoted, or nothing to do (the date was done already)   INFO
    3  the day's data failed validation: nothing trained or published             WARNING
    4  the quality gate failed: nothing published, the serving model is unchanged WARNING
    5  promotion conflict: current changed while the job ran; nothing published  WARNING
    2  bad arguments or recipe: every night will fail until the config is fixed  ERROR
    1  internal error (a re-run resumes from the last checkpoint)                 ERROR
       anything else (killed, command not found)                                  ERROR

Modes:
- `--once` runs the command one time (for --date, else $NIGHTLY_DATE, else yesterday in UTC) and
  exits with the command's exit code (128 + N if it died of signal N), so a platform scheduler
  (Kubernetes, Airflow, a `docker compose run`) sees the real outcome.
- Without `--once` it loops: sleep until the next HH:MM UTC (--at, else $NIGHTLY_AT, default
  02:30), run for the day before that run's date, log the outcome, repeat. A failed night does not
  stop the loop. On start, if today's HH:MM has already passed, it first runs for yesterday
  (catch-up, off with --no-catch-up or NIGHTLY_CATCH_UP=0): `recsys-mtl nightly` is idempotent per
  date, so that is a quick no-op when the run was done, and resumes an interrupted run (say the
  container was restarted mid-training) from its checkpoint. Earlier missed nights are not made
  up: the next night's training window includes them anyway.

--lock FILE (or $NIGHTLY_LOCK) takes an exclusive flock on FILE around each run, so this loop and
a run started by hand on the same volume never train the same date at once: --once gives up with
exit code 75 if the lock is held, the loop waits for it.

SIGTERM / SIGINT: while idle the scheduler exits 0 at once; during a run the signal is forwarded
to the run's whole process group (the job and its training ranks), the scheduler waits for it to
stop and exits 128 + N. The next start resumes that date from its checkpoint (catch-up above).

Only the standard library and recsys_mtl.exit_codes (the exit codes' one definition, itself
standard library only): it runs with the image's (or the venv's) Python, where the package is
installed, and needs no cron daemon, no Docker socket and no extra package. $NIGHTLY_NOW (ISO
time, e.g. 2026-01-08T00:10:00Z) replaces the clock, for tests. Log lines go to stdout:
`TIME nightly-scheduler LEVEL message`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from recsys_mtl.exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_CONFLICT,
    EXIT_DATA,
    EXIT_ERROR,
    EXIT_GATE,
    EXIT_LOCKED,  # --once, when another run holds the lock
    EXIT_OK,
)

DEFAULT_AT = "02:30"
LOCK_POLL_S = 5.0
SLEEP_STEP_S = 1.0  # the loop re-reads the clock this often, so clock changes and signals act fast

# exit code -> (log level, outcome, what it means for the operator)
OUTCOMES: dict[int, tuple[str, str, str]] = {
    EXIT_OK: ("INFO", "ok", "published and promoted, or nothing to do (this date was done already)"),
    EXIT_ERROR: (
        "ERROR",
        "internal_error",
        "internal error, see the log above; a re-run resumes from the last checkpoint",
    ),
    EXIT_BAD_INPUT: (
        "ERROR",
        "bad_config",
        "bad arguments or recipe: every run fails the same way until the configuration is fixed",
    ),
    EXIT_DATA: (
        "WARNING",
        "data_invalid",
        "the day's partition failed validation: nothing trained or published; fix or re-deliver "
        "the data, then run this date again",
    ),
    EXIT_GATE: (
        "WARNING",
        "gate_failed",
        "the new model failed the quality gate: nothing published, the serving model is unchanged; "
        "read the report in WORK/NAME/DATE/report/ (a re-run of this date needs --force)",
    ),
    EXIT_CONFLICT: (
        "WARNING",
        "promote_conflict",
        "the current version changed while the job ran (a promote or a rollback): nothing "
        "published; a re-run trains the date again against the new current",
    ),
}


def log(level: str, message: str) -> None:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"{stamp} nightly-scheduler {level} {message}", flush=True)


def describe(rc: int) -> tuple[str, str, str]:
    """(level, outcome, meaning) of the nightly command's exit code (negative: killed by a signal)."""
    if rc in OUTCOMES:
        return OUTCOMES[rc]
    if rc < 0 or rc > 128:
        sig = -rc if rc < 0 else rc - 128
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return (
            "ERROR",
            "killed",
            f"killed by {name} (out of memory? stopped?); a re-run resumes from the last checkpoint",
        )
    if rc == 127:
        return ("ERROR", "not_found", "command not found")
    if rc == 126:
        return ("ERROR", "not_executable", "command cannot be executed")
    return ("ERROR", "unexpected", f"unexpected exit code {rc}")


# ---- time -----------------------------------------------------------------------------------


def parse_at(text: str) -> dt.time:
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text.strip())
    if not m:
        raise ValueError(f"expected HH:MM (UTC, 00:00-23:59), got {text!r}")
    return dt.time(int(m.group(1)), int(m.group(2)), tzinfo=dt.UTC)


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def now_utc() -> dt.datetime:
    fixed = os.environ.get("NIGHTLY_NOW")
    if fixed:
        t = dt.datetime.fromisoformat(fixed)
        return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    return dt.datetime.now(dt.UTC)


def next_run(after: dt.datetime, at: dt.time) -> dt.datetime:
    """The first HH:MM UTC strictly after `after`."""
    t = dt.datetime.combine(after.date(), at)
    return t if t > after else t + dt.timedelta(days=1)


def last_run(now: dt.datetime, at: dt.time) -> dt.datetime:
    """The latest HH:MM UTC at or before `now` (the slot a catch-up makes up)."""
    t = dt.datetime.combine(now.date(), at)
    return t if t <= now else t - dt.timedelta(days=1)


def date_for(run_at: dt.datetime) -> dt.date:
    """A run at time T processes the day before T's date (UTC): the last complete day."""
    return run_at.astimezone(dt.UTC).date() - dt.timedelta(days=1)


def iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- running --------------------------------------------------------------------------------


class Locked(Exception):
    """Another run holds the lock file."""


class Scheduler:
    def __init__(self, command: Sequence[str], lock: Path | None) -> None:
        self.command = list(command)
        self.extra = shlex.split(os.environ.get("NIGHTLY_EXTRA_ARGS", ""))
        self.lock = lock
        self.stopping: int | None = None  # the signal that asked us to stop
        self.child: subprocess.Popen[bytes] | None = None

    def on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = signum
        child = self.child
        if child is not None and child.poll() is None:
            log("WARNING", f"got {signal.Signals(signum).name}: stopping the running job (pid {child.pid})")
            # the job and its training ranks share the process group we started it in
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signum)

    def sleep_until(self, t: dt.datetime) -> bool:
        """False when a signal asked us to stop first."""
        while self.stopping is None:
            left = (t - now_utc()).total_seconds()
            if left <= 0:
                return True
            time.sleep(min(left, SLEEP_STEP_S))
        return False

    def acquire(self, wait: bool) -> int | None:
        """The fd of the lock file, locked; None when no lock is configured. Raises Locked."""
        if self.lock is None:
            return None
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the job (PEP 446)
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if not wait or self.stopping is not None:
                    os.close(fd)
                    raise Locked(str(self.lock)) from None
                if not said:
                    log("INFO", f"waiting for {self.lock}: another nightly run holds it")
                    said = True
                time.sleep(LOCK_POLL_S)

    def run(self, date: dt.date, wait_for_lock: bool) -> int:
        """Run the command for `date` and log its outcome; return its exit code (shell-style)."""
        cmd = [*self.command, *self.extra, "--date", date.isoformat()]
        try:
            fd = self.acquire(wait_for_lock)
        except Locked:
            if self.stopping is not None:
                return 128 + self.stopping
            log("ERROR", f"date={date} rc={EXIT_LOCKED} outcome=locked: another run holds {self.lock}")
            return EXIT_LOCKED
        try:
            if self.stopping is not None:
                return 128 + self.stopping
            log("INFO", f"date={date} running: {shlex.join(cmd)}")
            t0 = time.monotonic()
            try:
                # its own process group: a signal reaches it once, from us, and reaches its children
                self.child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, process_group=0)
            except OSError as e:
                rc = 127 if isinstance(e, FileNotFoundError) else 126
                log("ERROR", f"date={date} cannot start {cmd[0]!r}: {e}")
            else:
                if self.stopping is not None:  # a signal that came while it was starting
                    self.on_signal(self.stopping, None)
                rc = self.child.wait()
                self.child = None
            level, outcome, meaning = describe(rc)
            rc = 128 - rc if rc < 0 else rc
            log(level, f"date={date} rc={rc} outcome={outcome} took={time.monotonic() - t0:.0f}s: {meaning}")
            return rc
        finally:
            if fd is not None:
                os.close(fd)

    def loop(self, at: dt.time, catch_up: bool) -> int:
        now = now_utc()
        if catch_up and last_run(now, at).date() == now.date():
            slot = last_run(now, at)
            log("INFO", f"catch-up: today's {at:%H:%M} UTC run time has passed; running for {date_for(slot)}")
            self.run(date_for(slot), wait_for_lock=True)
        target = next_run(now_utc(), at)
        while self.stopping is None:
            log("INFO", f"next run at {iso(target)} for date={date_for(target)}")
            if not self.sleep_until(target):
                break
            self.run(date_for(target), wait_for_lock=True)
            target = next_run(max(now_utc(), target), at)
        log("INFO", f"stopped by {signal.Signals(self.stopping or signal.SIGTERM).name}")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        split = argv.index("--")
        own, command = argv[:split], argv[split + 1 :]
    else:
        own, command = argv, []
    p = argparse.ArgumentParser(
        prog="nightly_scheduler.py",
        usage="%(prog)s [--once] [--date YYYY-MM-DD] [--at HH:MM] [--lock FILE] [--no-catch-up] "
        "[--print-next] -- COMMAND [ARGS...]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--once", action="store_true", help="run once and exit with the command's exit code")
    p.add_argument("--date", help="the date for --once (default: $NIGHTLY_DATE, else yesterday UTC)")
    p.add_argument("--at", help=f"daily run time, HH:MM UTC (default: $NIGHTLY_AT, else {DEFAULT_AT})")
    p.add_argument("--lock", type=Path, help="flock this file around each run (default: $NIGHTLY_LOCK)")
    p.add_argument("--no-catch-up", action="store_true", help="no run at start for a missed slot")
    p.add_argument("--print-next", action="store_true", help="print the next run time and its date, exit")
    args = p.parse_args(own)

    try:
        at = parse_at(args.at or os.environ.get("NIGHTLY_AT") or DEFAULT_AT)
        date_text = args.date or os.environ.get("NIGHTLY_DATE") or ""
        date = parse_date(date_text) if date_text else None
    except ValueError as e:
        p.error(str(e))
    if args.print_next:
        t = next_run(now_utc(), at)
        print(f"{iso(t)} {date_for(t)}")
        return 0
    if not command:
        p.error("no command: put the nightly command after `--`, e.g. -- recsys-mtl nightly --recipe ...")
    if "--date" in command or any(a.startswith("--date=") for a in command):
        p.error("the command must not contain --date: the scheduler appends it (use --date here with --once)")
    if date is not None and not args.once:
        p.error("--date / $NIGHTLY_DATE only go with --once: the loop always runs for yesterday")

    lock = args.lock or (Path(os.environ["NIGHTLY_LOCK"]) if os.environ.get("NIGHTLY_LOCK") else None)
    sched = Scheduler(command, lock)
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, sched.on_signal)
    if args.once:
        return sched.run(date or date_for(now_utc()), wait_for_lock=False)
    catch_up = not args.no_catch_up and os.environ.get("NIGHTLY_CATCH_UP", "1") != "0"
    log("INFO", f"scheduler started: every day at {at:%H:%M} UTC, command: {shlex.join(command)}")
    return sched.loop(at, catch_up)


if __name__ == "__main__":
    sys.exit(main())
