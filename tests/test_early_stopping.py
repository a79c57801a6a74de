"""Early stopping in the trainer (recipe `training.early_stopping_patience`): per-epoch validation on
the held-out days, the stop rule, and the best epoch's weights restored at the end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from recsys_mtl.recipe import Recipe, RecipeError, recipe_from_dict
from recsys_mtl.trainer import TrainConfig, train, validation_score


def small(recipe: Recipe, **training: object) -> Recipe:
    """The shipped recipe with a small MMoE and brisk rates, for a few-second training."""
    d = recipe.to_dict()
    d["model"] = {"type": "mmoe", "num_experts": 2, "expert_hidden": [16], "tower_hidden": [8]}
    # 3 days give hazard_long's weekly grid no full week of labels: allowed (its head is not tested)
    d["training"].update(batch_size=128, shuffle_buffer=1000, allow_untrained_tasks=True, **training)
    d["training"]["dense_optimizer"]["lr"] = 0.01
    return recipe_from_dict(d)


def test_the_option_is_validated(recipe: Recipe) -> None:
    d = recipe.to_dict()
    assert d["training"]["early_stopping_patience"] is None  # off unless asked for
    d["training"]["early_stopping_patience"] = 0
    with pytest.raises(RecipeError, match=r"training\.early_stopping_patience"):
        recipe_from_dict(d)


def test_validation_score_averages_the_defined_task_metrics() -> None:
    metrics = {"tasks": {"a": {"auc": 0.8}, "b": {"auc": None}, "h": {"c_index": 0.6}}}
    score, per_task = validation_score(metrics)
    assert per_task == {"a": 0.8, "h": 0.6}
    assert score == pytest.approx(0.7)
    assert math.isnan(validation_score({"tasks": {"b": {"auc": None}}})[0])


def test_early_stopping_needs_held_out_days(recipe: Recipe, data_dir: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data_dir=data_dir, out=tmp_path / "run", eval_days=0, progress=False)
    with pytest.raises(ValueError, match="held-out days"):
        train(small(recipe, epochs=2, early_stopping_patience=1), cfg)


def test_stops_after_patience_and_restores_the_best_epoch(
    recipe: Recipe, data_dir: Path, tmp_path: Path
) -> None:
    # Random labels (conftest's raw table): validation scores wander around 0.5, so the best epoch
    # comes early and patience 1 ends training soon after; what matters is the bookkeeping.
    out = tmp_path / "run"
    patience, epochs = 1, 8
    info = train(
        small(recipe, epochs=epochs, early_stopping_patience=patience),
        TrainConfig(data_dir=data_dir, out=out, eval_days=1, threads=1, progress=False),
    )
    es = info["early_stopping"]
    history = es["history"]
    scores = [h["score"] for h in history]
    best = max(range(len(scores)), key=lambda i: scores[i])  # first maximum
    assert es["best_epoch"] == best + 1 and es["best_score"] == scores[best]
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    if es["stopped_early"]:
        assert len(history) == es["best_epoch"] + patience < epochs + 1
    else:
        assert len(history) == epochs
    steps_per_epoch = history[0]["step"]
    assert info["steps"] == len(history) * steps_per_epoch
    assert es["validation_seconds"] > 0 and info["seconds"] > 0
    assert info["cpu_seconds"] > 0 and info["samples_per_cpu_s"] > 0
    # The run ends with the best epoch's weights: its final evaluation (a plain model loaded from
    # the final checkpoint) scores what the best epoch scored during training.
    final, _ = validation_score(json.loads((out / "metrics.json").read_text()))
    assert final == pytest.approx(es["best_score"], abs=1e-4)
    assert not (out / "checkpoints" / "best").exists()  # the snapshot is cleaned up
    assert json.loads((out / "run.json").read_text())["early_stopping"]["best_epoch"] == es["best_epoch"]
