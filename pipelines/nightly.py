"""The nightly job: validate the day -> train (warm start) -> evaluate new vs serving -> gate ->
export, publish, promote -> report (DESIGN.md, nightly job).

For date D, with W = the recipe's `nightly.window_days`:
- D's partition is validated (pipelines/validate.py); a failure stops here (exit 3).
- A model is trained on the days [D - W, D - 1] that exist, warm-started from the registry's
  current model (cold the first time), sharded over `--nproc` ranks as `recsys-mtl train` does.
  Labels are censored at the end of D - 1 (the trainer's label cutoff), so nothing from D leaks.
- D is the held-out slice: the new model and the serving model are both scored on all of D's rows
  by the same code (`recsys_mtl.evaluation`), the serving one through its exported artifact.
- The gate (pipelines/gate.py) compares them per task. Only if it passes is the model exported
  (fp32 + int8 build), published as the next version with its report and the nightly record
  (date, validation, gate decision) in the manifest, and promoted by atomic rename of current.json;
  running servers pick it up on their next reload check. A failed gate publishes nothing (exit 4)
  and leaves its report in WORK/NAME/D/report/.

Idempotent per date: a date whose model is in the registry is not trained again (it is only
promoted if a crash came between publish and promote); a date whose gate failed is not re-run;
`--force` re-runs either. Crash-safe: training checkpoints every `nightly.checkpoint_every` steps
into WORK/NAME/D/run, and a second start resumes from the latest checkpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys_mtl.dataset import DataError, list_partitions
from recsys_mtl.recipe import Recipe
from recsys_mtl.registry import Registry, RegistryError
from recsys_mtl.run import write_json_atomic

log = logging.getLogger("pipelines.nightly")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_DATA = 3
EXIT_GATE = 4

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

    serving_version = reg.current(cfg.name) if cfg.name in reg.names() else None
    run_dir = cfg.work_dir / "run"
    with steps.step(
        "train",
        f"{cfg.recipe.model.type} on {window[0]}..{window[-1]} ({len(window)} day(s)), "
        f"{cfg.nproc} process(es), "
        + (f"warm start from v{serving_version}" if serving_version else "cold start (no current model)"),
    ):
        _write_state(cfg, "training")
        rc = _train(cfg, run_dir, window, warm_start=serving_version is not None)
    if rc != 0:
        _write_state(cfg, "train_failed", exit_code=rc)
        return Outcome(EXIT_ERROR if rc != EXIT_BAD_INPUT else EXIT_BAD_INPUT, f"training failed (exit {rc})")

    from pipelines.evaluate import evaluate_pair

    with steps.step("evaluate", f"new vs serving ({serving_version or 'none'}) on all rows of {cfg.day}"):
        pair = evaluate_pair(cfg.recipe, run_dir, reg, cfg.name, serving_version, cfg.data_dir, cfg.date)
        write_json_atomic(run_dir / "metrics.json", pair.new_metrics)  # exported into the manifest

    from pipelines.gate import quality_gate

    with steps.step("gate", "per-task AUC / C-index against the serving model (or the floors)"):
        decision = quality_gate(cfg.recipe, pair.new_metrics, pair.serving_metrics, serving_version)
        for r in decision["rows"]:
            log.info(
                "gate %-13s %-7s new %s serving %s -> %s",
                r["task"], r["metric"], _f(r["new"]), _f(r["serving"]), "pass" if r["passed"] else "FAIL",
            )  # fmt: skip

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
        )
    if not decision["passed"]:
        _write_state(cfg, "gate_failed", reason=decision["reason"])
        log.error("quality gate failed for %s: %s; nothing published", cfg.day, decision["reason"])
        return Outcome(
            EXIT_GATE, f"quality gate failed: {decision['reason']}", None, report_dir, steps.timings
        )

    from recsys_mtl.export import export_run

    with steps.step("publish", f"export (fp32 + int8), publish and promote {cfg.name}"):
        record = {"date": cfg.day, "train_days": [window[0], window[-1]], "validation": validation.as_dict()}
        record["gate"] = decision
        res = export_run(
            run_dir,
            reg,
            cfg.name,
            int8_companion=True,
            extra_files={p.name: p.read_bytes() for p in files},
            extra_manifest={"nightly": record},
        )
        reg.promote(cfg.name, res.version)
    _write_state(cfg, "published", version=res.version)
    msg = f"published and promoted {cfg.name} v{res.version} for {cfg.day} ({decision['reason']})"
    log.info("%s; report: %s", msg, res.path / "report.html")
    return Outcome(EXIT_OK, msg, res.version, res.path, steps.timings)


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _already_done(cfg: NightlyConfig, reg: Registry) -> Outcome | None:
    """The outcome of an earlier run for the same date, unless --force."""
    if cfg.force:
        return None
    version = published_version_for(reg, cfg.name, cfg.day) if cfg.name in reg.names() else None
    if version is not None:
        crashed_before_promote = (
            _read_state(cfg).get("status") != "published"
            and reg.current(cfg.name) != version
            and _newest_nightly(reg, cfg.name) == version
        )
        # (a version that was promoted and later rolled back is left alone: state says published)
        if crashed_before_promote:
            reg.promote(cfg.name, version)
            _write_state(cfg, "published", version=version)
            return Outcome(
                EXIT_OK, f"{cfg.day} was published as v{version} but not promoted: promoted it now", version
            )
        return Outcome(
            EXIT_OK, f"{cfg.day} already published as v{version}: nothing to do (--force re-runs it)", version
        )
    state = _read_state(cfg)
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


def _train(cfg: NightlyConfig, run_dir: Path, window: list[str], warm_start: bool) -> int:
    """`recsys-mtl train` in a child process (its ranks die with this job's process group), resumed
    from its latest checkpoint when an earlier attempt was interrupted."""
    from recsys_mtl.checkpoint import latest_checkpoint

    info_path = run_dir / "run.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if info.get("status") == "finished":
        log.info("training for %s already finished in %s: reusing it", cfg.day, run_dir)
        return 0
    cmd = [
        sys.executable, "-m", "recsys_mtl.cli", "train",
        "--recipe", str(cfg.recipe_path), "--data", str(cfg.data_dir), "--out", str(run_dir),
        "--start", window[0], "--end", window[-1], "--eval-days", "0",
        "--nproc", str(cfg.nproc), "--checkpoint-every", str(cfg.recipe.nightly.checkpoint_every),
    ]  # fmt: skip
    if info and latest_checkpoint(run_dir) is not None:
        log.info("resuming the interrupted training in %s from its latest checkpoint", run_dir)
        cmd.append("--resume")
    else:
        cmd.append("--overwrite")
        if warm_start:
            cmd += ["--warm-start", str(cfg.registry / cfg.name)]
    if cfg.epochs:
        cmd += ["--epochs", str(cfg.epochs)]
    if cfg.threads:
        cmd += ["--threads", str(cfg.threads)]
    if not cfg.progress:
        cmd.append("--no-progress")
    return subprocess.call(cmd, stdin=subprocess.DEVNULL, env={**os.environ})


def _loss_history(run_dir: Path) -> list[dict[str, Any]]:
    """Training loss over steps (the trainer's `loss_curve` in run.json: mean loss per window of
    `log_every` steps, with the per-task terms)."""
    try:
        return list(json.loads((run_dir / "run.json").read_text()).get("loss_curve") or [])
    except (OSError, json.JSONDecodeError):
        return []
