"""Score the new run and the serving model on the same held-out day, with the same code.

The new model is the run's consolidated eager model; the serving model is the registry's exported
artifact (what users are scored with), fed by its own manifest's feature transform. Both go through
`recsys_mtl.evaluation.predict` + `compute_metrics` on every row of the day, so the gate compares
like with like. Expert diagnostics come from the new (eager) model.

Calibration: the new model's map is fitted on the day (`recsys_mtl.calibration.fit_and_report`):
its metrics get the after-numbers (out-of-fold), and the map is what the published artifact
carries (the nightly job writes it into the run). The serving model is scored through its artifact,
so its scores are already calibrated by the map it was published with (if any). The gate reads
the raw new predictions: ranking is unchanged by the map for head tasks.

Cold start: the day's rows whose item is new (held out of training by the new model's
`data.holdout_items` hash, or absent from its training window's rows: `recsys_mtl.cold_start`) are
reported apart from the known items' rows, for both models on the same rows (metrics.json's
"cold_start"; the report's "New vs known items" table). New and known are the new model's: an item
first seen on D - 1 is known to it even though the serving model never saw it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys_mtl.calibration import HeldOutCalibration, fit_and_report
from recsys_mtl.cold_start import ColdStartSplit, run_training_items
from recsys_mtl.evaluation import Predictions, compute_metrics, evaluation_reader, expert_usage, predict
from recsys_mtl.loader import PerRowForward, load_model
from recsys_mtl.recipe import Recipe, recipe_from_dict
from recsys_mtl.registry import MANIFEST_FILE, Registry
from recsys_mtl.run import load_run


@dataclass
class EvaluatedPair:
    new_preds: Predictions
    new_metrics: dict[str, Any]
    experts: dict[str, Any]
    serving_preds: Predictions | None
    serving_metrics: dict[str, Any] | None
    calibration: HeldOutCalibration | None = None  # the new model's map, fitted on the day
    cold_start: ColdStartSplit | None = None  # which of the day's rows are new items (both models)


def evaluate_pair(
    recipe: Recipe,
    run_dir: Path,
    registry: Registry,
    name: str,
    serving_version: str | None,
    data_dir: Path,
    day: dt.date,
    diagnostics_batches: int = 20,
) -> EvaluatedPair:
    run = load_run(run_dir)
    reader = evaluation_reader(run.recipe, data_dir, transform=run.transform, start=day, end=day)
    new_preds = predict(run.model, reader)
    experts = expert_usage(run.model, reader, diagnostics_batches)
    held = fit_and_report(run.recipe, new_preds, [day.isoformat()])
    split = None
    if new_preds.items is not None:  # known: the items of the new model's training window
        known = run_training_items(run.recipe, run.info)
        split = ColdStartSplit.of(new_preds.items, run.recipe.data.holdout_items, known)
    new_metrics = compute_metrics(
        run.recipe,
        new_preds,
        experts,
        calibrated=held.out_of_fold,
        calibrated_ranking=held.applied,
        calibration_info=held.metrics_info(),
        cold_start=split,
    )
    if serving_version is None:
        return EvaluatedPair(new_preds, new_metrics, experts, None, None, held, split)
    serving = load_model(registry, name, serving_version)
    serving_recipe = recipe_from_dict(serving.manifest["recipe"], f"{serving.path}/{MANIFEST_FILE}")
    s_reader = evaluation_reader(serving_recipe, data_dir, transform=serving.transform, start=day, end=day)
    serving_preds = predict(PerRowForward(serving), s_reader)  # per-row batches, whichever its export
    # the same rows in the same order (one day, storage order): the new model's split applies
    same_rows = split is not None and serving_preds.num_rows == new_preds.num_rows
    serving_metrics = compute_metrics(serving_recipe, serving_preds, cold_start=split if same_rows else None)
    return EvaluatedPair(new_preds, new_metrics, experts, serving_preds, serving_metrics, held, split)
