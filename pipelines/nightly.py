"""The nightly job: validate the day -> train (warm start) -> evaluate new vs serving -> gate ->
export, publish, promote -> report (README, "The nightly job"; docs/OPERATIONS.md).

For date D, with W = the recipe's `nightly.window_days`:
- D's partition is validated (pipelines/validate.py); a failure stops here (exit 3).
- A model is trained on the days [D - W, D - 1] that exist, warm-started from the registry's
  current model (cold the first time), sharded over `--nproc` ranks as `recsys-mtl train` does.
  Labels are censored at the end of D - 1 (the trainer's label cutoff), so nothing from D leaks.
- D is the held-out slice: the new model and the serving model are both scored on all of D's rows
  by the same code (`recsys_mtl.evaluation`), the serving one through its exported artifact. The
  rows of new items (held out by `data.holdout_items`, or absent from the training window) are also
  scored apart from the known items' (`recsys_mtl.cold_start`; the report's "New vs known items").
- The new model's calibration map (recipe `calibration`) is fitted on D's rows, the day it is
  evaluated on (RUN/calibration.json; before/after, out-of-fold, in the report); the published
  artifact carries it (`recsys_mtl.calibration`).
- The gate (pipelines/gate.py) compares them per task. Only if it passes is the model exported
  (fp32 + int8 build), published as the next version with its report and the nightly record
  (date, validation, gate decision) in the manifest, and promoted by atomic rename of current.json;
  running servers pick it up on their next reload check. A failed gate publishes nothing (exit 4)
  and leaves its report in WORK/NAME/D/report/.
- Publish and promote are one compare-and-swap under the registry's promote lock: only if the
  version the model was warm-started from and gated against is still current. If someone promoted
  or rolled back meanwhile, nothing is published (exit 5) and the next start trains the date again.

Idempotent per date: a date whose model is in the registry is not trained again (it is only
promoted if a crash came between publish and promote, and never once an operator rolled it back);
a date whose gate failed is not re-run; `--force` re-runs either. Crash-safe: training checkpoints
every `nightly.checkpoint_every` steps into WORK/NAME/D/run, and a second start resumes from the
latest checkpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_mtl.atomic_files import write_json_atomic
from recsys_mtl.calibration import HeldOutCalibration
from recsys_mtl.cli.train import PYTHON_CLI, train_command
from recsys_mtl.exit_codes import (  # the job's codes (defined once, for the CLI and the scheduler too)
    EXIT_BAD_INPUT,
    EXIT_CONFLICT,
    EXIT_DATA,
    EXIT_ERROR,
    EXIT_GATE,
    EXIT_OK,
)
from recsys_mtl.partitions import DataError, list_partitions
from recsys_mtl.recipe import Recipe
from recsys_mtl.registry import PromoteConflict, Registry, RegistryError, RolledBackError
from recsys_mtl.run import METRICS_FILE, RUN_FILE, RunError, latest_checkpoint, read_run_info

if TYPE_CHECKING:  # imported where the job evaluates: the CLI's --help stays light
    from pipelines.new_vs_serving import EvaluatedPair
    from recsys_mtl.evaluation import Predictions

log = logging.getLogger("pipelines.nightly")

STATE_FILE = "state.json"


@dataclass
class NightlyConfig:
    date: dt.date
    recipe_path: Path
    recipe: Recipe
    data_dir: Path
    registry: Path
    name: str
    work: Path
    nproc: int = 1
    force: bool = False
    epochs: int | None = None
    threads: int | None = None
    progress: bool = False

    @property
    def day(self) -> str:
        return self.date.isoformat()

    @property
    def work_dir(self) -> Path:
        return self.work / self.name / self.day


@dataclass
class Outcome:
    code: int
    message: str
    version: str | None = None
    report_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Steps:
    """Logs which step runs and how long each took (the timings go into the report)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, what: str) -> Iterator[None]:
        self.n += 1
        log.info("step %d/%d %s: %s", self.n, self.total, name, what)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - t0, 2)
            log.info("step %d/%d %s took %.1fs", self.n, self.total, name, self.timings[name])


# ---------------------------------------------------------------------------------------------
# state and idempotency
# ---------------------------------------------------------------------------------------------


def _read_state(cfg: NightlyConfig) -> dict[str, Any]:
    p = cfg.work_dir / STATE_FILE
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_state(cfg: NightlyConfig, status: str, **extra: Any) -> None:
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    state = {**_read_state(cfg), "date": cfg.day, "status": status, "updated_at": _now(), **extra}
    write_json_atomic(cfg.work_dir / STATE_FILE, state)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def published_version_for(reg: Registry, name: str, day: str) -> str | None:
    """The registry version a nightly run for `day` published, if any."""
    for v in reversed(reg.versions(name)):
        try:
            nightly = reg.manifest(name, v).get("nightly") or {}
        except RegistryError:
            continue
        if nightly.get("date") == day:
            return v
    return None


# ---------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------


def run_nightly(cfg: NightlyConfig) -> Outcome:
    """The whole job for one date: `gate_day`, then `publish_gated` if the gate passed."""
    gated = gate_day(cfg)
    return gated if isinstance(gated, Outcome) else publish_gated(cfg, gated)


@dataclass
class GatedRun:
    """A model trained and gated for a date, not yet published: what `publish_gated` needs."""

    serving_version: str | None  # what it was warm-started from and gated against
    run_dir: Path
    window: list[str]
    validation: dict[str, Any]
    decision: dict[str, Any]
    report_files: list[Path]
    report_dir: Path
    steps: Steps


def gate_day(cfg: NightlyConfig) -> GatedRun | Outcome:
    """Steps 1-5: validate the day, train (warm-started from the version current now), evaluate
    new vs that version, gate, report. An Outcome when the job ends here (already done, bad data,
    training failed, gate failed); a GatedRun when the model may be published."""
    reg = Registry(cfg.registry)
    steps = Steps(total=6)
    done = _already_done(cfg, reg)
    if done is not None:
        return done
    if cfg.force and cfg.work_dir.exists():
        log.info("--force: starting %s over (removing %s)", cfg.day, cfg.work_dir)
        shutil.rmtree(cfg.work_dir)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)

    from pipelines.validate import validate_day

    with steps.step("validate", f"checking {cfg.data_dir}/{cfg.recipe.data.partition}={cfg.day}"):
        validation = validate_day(cfg.recipe, cfg.data_dir, cfg.date)
        write_json_atomic(cfg.work_dir / "validation.json", validation.as_dict())
    if not validation.passed:
        _write_state(cfg, "data_failed", reason=validation.reason)
        log.error("data validation failed for %s: %s", cfg.day, validation.reason)
        return Outcome(EXIT_DATA, f"data validation failed: {validation.reason}", timings=steps.timings)
    log.info("data ok: %s rows, %d checks passed", f"{validation.rows:,}", len(validation.checks))

    window = _training_days(cfg)
    if not window:
        msg = f"no training days in the {cfg.recipe.nightly.window_days} day(s) before {cfg.day}"
        _write_state(cfg, "data_failed", reason=msg)
        return Outcome(EXIT_DATA, msg, timings=steps.timings)

    # One read of current for the whole run: the warm start, the comparison and the gate all use
    # this version, and the publish promotes only if it is still current (compare-and-swap).
    serving_version = reg.current(cfg.name) if cfg.name in reg.names() else None
    run_dir = cfg.work_dir / "run"
    earlier = _read_state(cfg)
    if "warm_start" in earlier and earlier["warm_start"] != serving_version and run_dir.exists():
        # an earlier attempt (killed, or one that lost its promotion) trained from another version
        log.info(
            "the earlier attempt of %s trained from %s; current is %s now: training again from it",
            cfg.day, _v(earlier["warm_start"]), _v(serving_version),
        )  # fmt: skip
        shutil.rmtree(run_dir)
    with steps.step(
        "train",
        f"{cfg.recipe.model.type} on {window[0]}..{window[-1]} ({len(window)} day(s)), "
        f"{cfg.nproc} process(es), "
        + (f"warm start from v{serving_version}" if serving_version else "cold start (no current model)"),
    ):
        _write_state(cfg, "training", warm_start=serving_version)
        rc = _train(cfg, run_dir, window, warm_start=serving_version)
    if rc != 0:
        _write_state(cfg, "train_failed", exit_code=rc)
        return Outcome(EXIT_ERROR if rc != EXIT_BAD_INPUT else EXIT_BAD_INPUT, f"training failed (exit {rc})")

    from pipelines.new_vs_serving import evaluate_pair

    with steps.step("evaluate", f"new vs serving ({serving_version or 'none'}) on all rows of {cfg.day}"):
        pair = evaluate_pair(cfg.recipe, run_dir, reg, cfg.name, serving_version, cfg.data_dir, cfg.date)
        write_json_atomic(run_dir / METRICS_FILE, pair.new_metrics)  # exported into the manifest
        _save_calibration(run_dir, pair.calibration)  # exported into the artifact
        _log_cold_start(pair.new_metrics)

    from pipelines.gate import gate_table_lines, quality_gate

    spec = cfg.recipe.nightly.gate
    with steps.step(
        "gate",
        f"per-task AUC / C-index against the serving model (or the floors), {spec.rule} rule, "
        f"{spec.confidence:.0%} paired bootstrap intervals ({spec.resamples} resamples)",
    ):
        decision = quality_gate(cfg.recipe, _as_shipped(pair), pair.serving_preds, serving_version)
        for line in gate_table_lines(decision):
            log.info("gate %s", line)

    from pipelines.report import write_report

    report_dir = cfg.work_dir / "report"
    with steps.step("report", f"writing {report_dir}"):
        files = write_report(
            report_dir,
            name=cfg.name,
            date=cfg.day,
            recipe=cfg.recipe,
            decision=decision,
            new_preds=pair.new_preds,
            serving_preds=pair.serving_preds,
            new_metrics=pair.new_metrics,
            serving_metrics=pair.serving_metrics,
            experts=pair.experts,
            loss_history=_loss_history(run_dir),
            validation=validation.as_dict(),
            timings=steps.timings,
            new_calibrated=pair.calibration.out_of_fold if pair.calibration else None,
        )
    if not decision["passed"]:
        _write_state(cfg, "gate_failed", reason=decision["reason"])
        log.error("quality gate failed for %s: %s; nothing published", cfg.day, decision["reason"])
        return Outcome(
            EXIT_GATE, f"quality gate failed: {decision['reason']}", None, report_dir, steps.timings
        )
    return GatedRun(
        serving_version, run_dir, window, validation.as_dict(), decision, files, report_dir, steps
    )


def _as_shipped(pair: EvaluatedPair) -> Predictions:
    """The new model's predictions as its artifact will serve them: with the calibration map it
    carries (fitted on this day). The serving model is scored through its artifact, so it is
    calibrated too; comparing a raw new model with it would judge a product task (ctcvr = ctr x
    cvr, whose ranking two maps change) on different scores from the ones that ship."""
    held = pair.calibration
    if held is None or not held.applied:
        return pair.new_preds
    return pair.new_preds.replace_scores(held.applied)


def publish_gated(cfg: NightlyConfig, gated: GatedRun) -> Outcome:
    """Step 6: export (fp32 + int8), publish and promote in one locked step, only if the version
    the model was gated against is still current; otherwise nothing is published (EXIT_CONFLICT)."""
    from recsys_mtl.export import export_run

    reg = Registry(cfg.registry)
    steps = gated.steps
    with steps.step("publish", f"export (fp32 + int8), publish and promote {cfg.name}"):
        record = {"date": cfg.day, "train_days": [gated.window[0], gated.window[-1]]}
        record.update(validation=gated.validation, gate=gated.decision)
        _write_state(cfg, "publishing", gated_against=gated.serving_version)
        try:
            res = export_run(
                gated.run_dir,
                reg,
                cfg.name,
                int8_companion=True,
                promote=True,
                expect=gated.serving_version,
                extra_files={p.name: p.read_bytes() for p in gated.report_files},
                extra_manifest={"nightly": record},
            )
        except PromoteConflict as e:
            return _conflict(
                cfg,
                e,
                "nothing was published; run the date again to train and gate it against the version "
                "current now",
                gated.report_dir,
                steps.timings,
            )
    _write_state(cfg, "published", version=res.version)
    msg = f"published and promoted {cfg.name} v{res.version} for {cfg.day} ({gated.decision['reason']})"
    log.info("%s; report: %s", msg, res.path / "report.html")
    return Outcome(EXIT_OK, msg, res.version, res.path, steps.timings)


def _conflict(
    cfg: NightlyConfig,
    e: PromoteConflict,
    outcome: str,
    report_dir: Path | None,
    timings: dict[str, float],
) -> Outcome:
    """Current moved while the job ran: nothing promoted; the next start of the date trains again
    from, and gates against, the version current then (its state's warm_start differs)."""
    _write_state(cfg, "promote_conflict", expected=e.expected, found=e.actual)
    msg = (
        f"promotion conflict: the model was gated against {_v(e.expected)}, but {_v(e.actual)} became "
        f"current while the job ran (another promote or a rollback): {outcome}"
    )
    log.error("%s", msg)
    return Outcome(EXIT_CONFLICT, msg, None, report_dir, timings)


def _v(version: str | None) -> str:
    return "no version" if version is None else f"v{version}"


def _already_done(cfg: NightlyConfig, reg: Registry) -> Outcome | None:
    """The outcome of an earlier run for the same date, unless --force.

    A published date is never promoted again, except to finish a run that crashed between its
    publish and its promote (its state says "publishing"), and even then only as a
    compare-and-swap against the version it was gated against, and never if an operator rolled
    the version back (`Registry.rolled_back`)."""
    if cfg.force:
        return None
    version = published_version_for(reg, cfg.name, cfg.day) if cfg.name in reg.names() else None
    state = _read_state(cfg)
    if version is not None:
        rolled = reg.rolled_back(cfg.name).get(version)
        if rolled is not None:
            return Outcome(
                EXIT_OK,
                f"{cfg.day} already published as v{version}, which was rolled back to "
                f"v{rolled.get('to')} at {rolled.get('rolled_back_at')}: not promoted again, nothing "
                "to do (--force trains the date again as a new version)",
                version,
            )
        crashed_before_promote = (
            state.get("status") == "publishing"
            and reg.current(cfg.name) != version
            and _newest_nightly(reg, cfg.name) == version
        )
        if crashed_before_promote:
            try:
                reg.promote(cfg.name, version, expect=state.get("gated_against"), unless_rolled_back=True)
            except PromoteConflict as e:
                return _conflict(
                    cfg,
                    e,
                    f"v{version} stays published, not promoted; --force trains the date again",
                    None,
                    {},
                )
            except RolledBackError as e:  # rolled back since the check above
                return Outcome(EXIT_OK, f"{cfg.day} already published as v{version}: {e}", version)
            _write_state(cfg, "published", version=version)
            return Outcome(
                EXIT_OK, f"{cfg.day} was published as v{version} but not promoted: promoted it now", version
            )
        return Outcome(
            EXIT_OK, f"{cfg.day} already published as v{version}: nothing to do (--force re-runs it)", version
        )
    if state.get("status") == "gate_failed":
        return Outcome(
            EXIT_GATE,
            f"{cfg.day} already ran and failed the quality gate ({state.get('reason')}); --force re-runs it",
            report_dir=cfg.work_dir / "report",
        )
    return None


def _newest_nightly(reg: Registry, name: str) -> str | None:
    for v in reversed(reg.versions(name)):
        if reg.manifest(name, v).get("nightly"):
            return v
    return None


def _training_days(cfg: NightlyConfig) -> list[str]:
    w = cfg.recipe.nightly.window_days
    start, end = cfg.date - dt.timedelta(days=w), cfg.date - dt.timedelta(days=1)
    try:
        days = list_partitions(cfg.data_dir, start, end, cfg.recipe.data.partition)
    except DataError:
        return []
    return [d.isoformat() for d in sorted(days)]


def _train(cfg: NightlyConfig, run_dir: Path, window: list[str], warm_start: str | None) -> int:
    """`recsys-mtl train` in a child process (its ranks die with this job's process group), resumed
    from its latest checkpoint when an earlier attempt was interrupted; warm-started from the
    registry version `warm_start` by its own directory (not current.json, which may move while
    the job runs), its weights checked against the manifest by the trainer."""
    info = read_run_info(run_dir) if (run_dir / RUN_FILE).is_file() else {}
    if info.get("status") == "finished":
        log.info("training for %s already finished in %s: reusing it", cfg.day, run_dir)
        return 0
    resume = bool(info) and latest_checkpoint(run_dir) is not None
    if resume:
        log.info("resuming the interrupted training in %s from its latest checkpoint", run_dir)
    warm_dir = None
    if not resume and warm_start is not None:
        warm_dir = Registry(cfg.registry).version_dir(cfg.name, warm_start)
    cmd = train_command(
        cfg.recipe_path, cfg.data_dir, run_dir, program=PYTHON_CLI,
        start=window[0], end=window[-1], eval_days=0,
        nproc=cfg.nproc, checkpoint_every=cfg.recipe.nightly.checkpoint_every,
        resume=resume, overwrite=not resume, warm_start=warm_dir,
        epochs=cfg.epochs or None, threads=cfg.threads or None, no_progress=not cfg.progress,
    )  # fmt: skip
    return subprocess.call(cmd, stdin=subprocess.DEVNULL, env={**os.environ})


def _save_calibration(run_dir: Path, held: HeldOutCalibration | None) -> None:
    """The new model's map (fitted on D) as RUN/calibration.json, which `export_run` puts into the
    artifact; none (recipe method none, or no task could be fitted) removes a stale one."""
    from recsys_mtl.calibration import CALIBRATION_FILE

    path = run_dir / CALIBRATION_FILE
    cal = held.calibration if held is not None else None
    if cal is None or not cal.maps:
        path.unlink(missing_ok=True)
        why = (
            "recipe calibration.method none"
            if cal is None
            else f"no task fitted: {cal.fitted_on.get('skipped')}"
        )
        log.info("calibration: no map for the new model (%s): it is published uncalibrated", why)
        return
    cal.save(path)
    for task, r in ((cal.report or {}).get("tasks") or {}).items():
        b, a = r["before"], r["after"]
        log.info(
            "calibration %s (%s, out-of-fold on %s): pred/obs %s -> %s, ECE %s -> %s",
            *(task, cal.method, cal.fitted_on.get("days")),
            *(b["pred_obs_ratio"], a["pred_obs_ratio"], b["ece"], a["ece"]),
        )


def _log_cold_start(metrics: dict[str, Any]) -> None:
    """One line: how many of the day's rows and items are new to the new model."""
    cs = metrics.get("cold_start")
    if not cs:
        log.info("cold start: no new items on the day (every item was in the training window)")
        return
    rows, items = cs["rows"], cs["items"]
    log.info(
        "cold start: %s new items (%s rows), %s known (%s rows); data.holdout_items %g",
        f"{items['new']:,}", f"{rows['new']:,}", f"{items['known']:,}", f"{rows['known']:,}",
        cs["holdout_items"],
    )  # fmt: skip


def _loss_history(run_dir: Path) -> list[dict[str, Any]]:
    """Training loss over steps (the trainer's `loss_curve` in run.json: mean loss per window of
    `log_every` steps, with the per-task terms)."""
    try:
        return list(read_run_info(run_dir).get("loss_curve") or [])
    except (OSError, RunError):
        return []
