"""Recipes: one YAML file that says which features, tasks, model and training options to use.

Every part of the product reads the same validated `Recipe`. A wrong recipe fails at load with a
`RecipeError` whose message names the field's path (``features.3.hash_size``) and what was
expected, so a user never meets a KeyError deep inside training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recsys_mtl.threads import OMP_WAIT_PATTERN
from recsys_mtl.yaml_config import field_errors, read_yaml


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the field path and what was expected."""


class _Strict(BaseModel):
    # Unknown keys are typos far more often than intent: reject them.
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


class DenseStats(_Strict):
    """Standardisation statistics of a dense feature, measured on training data (after log)."""

    mean: float
    std: float = Field(gt=0)


class FeatureSpec(_Strict):
    """One input feature.

    kinds:
      id        one categorical value per row (int or string), pooled into one embedding
      multi_id  a list of categorical values per row, pooled (sum/mean) into one embedding
      sequence  a behaviour sequence (list, newest first), kept unpooled for attention;
                truncated to ``max_len``
      dense     a float
      vector    a fixed-length float vector (``dim`` values, e.g. a creative's image/text
                embedding from a pretrained encoder), read through a learned linear projection
                into ``embedding_dim`` columns of the shared input

    The dense input the model reads is the scalar ``dense`` features (recipe order), then each
    ``vector`` feature's block of ``dense_width`` columns (recipe order): `dense_layout`.
    """

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    kind: Literal["id", "multi_id", "sequence", "dense", "vector"]
    column: str | None = Field(default=None, description="Parquet column; defaults to `name`.")
    group: Literal["user", "item", "context"] = "user"
    # --- categorical ---
    value_type: Literal["int", "string"] = "int"
    table: str | None = Field(
        default=None,
        description="Embedding table name; features naming the same table share rows "
        "(e.g. clicked_items shares the creative_id table). Defaults to the feature name.",
    )
    hash_size: int | None = Field(default=None, ge=2, description="Rows in the table, row 0 reserved.")
    vocabulary: list[int] | list[str] | None = Field(
        default=None, description="Explicit vocabulary: values outside it map to the reserved row 0."
    )
    embedding_dim: int | None = Field(
        default=None, ge=1, description="Embedding width; for a vector feature, its projection's width."
    )
    pooling: Literal["sum", "mean"] = "sum"
    max_len: int | None = Field(default=None, ge=1, description="Truncation length of list features.")
    # --- dense ---
    default: float = Field(default=0.0, description="Value used for missing, NaN and inf.")
    log: bool = Field(default=False, description="Apply sign(x) * log1p(|x|) before standardising.")
    clip: float | None = Field(default=None, gt=0, description="Clip |x| after standardising.")
    stats: DenseStats | None = None
    # --- vector ---
    dim: int | None = Field(default=None, ge=1, description="Values per row of a vector feature.")
    normalize: Literal["none", "l2"] = Field(
        default="none", description="Vector features: `l2` scales each vector to unit length."
    )
    missing: Literal["zeros", "error"] = Field(
        default="zeros",
        description="Vector features: `zeros` reads a null vector as zeros plus a per-feature "
        "missing indicator column the model sees (1 when missing); `error` refuses null vectors.",
    )
    train_noise: float = Field(
        default=0.0,
        ge=0.0,
        description="Vector features: standard deviation of Gaussian noise added to each value in "
        "training only (not in evaluation or the exported model). A vector unique to each item is "
        "also a fingerprint the model can memorise items by; noise keeps what generalises to new "
        "items (docs/METHODS.md, 'Content vectors').",
    )

    @property
    def source(self) -> str:
        return self.column or self.name

    @property
    def table_name(self) -> str:
        return self.table or self.name

    @property
    def request_level(self) -> bool:
        """A user or context feature: one value per score request, shared by its candidates. The
        exported model computes such features' part once per request (docs/METHODS.md, "User-side
        work once"); `item` features are read per candidate."""
        return self.group != "item"

    @property
    def is_sparse(self) -> bool:
        return self.kind in ("id", "multi_id", "sequence")

    @property
    def dense_width(self) -> int:
        """Columns this feature occupies in the dense input: 1 for a scalar, ``dim`` (+1 missing
        indicator under ``missing: zeros``) for a vector, 0 for a categorical feature."""
        if self.kind == "dense":
            return 1
        if self.kind == "vector":
            assert self.dim is not None
            return self.dim + (1 if self.missing == "zeros" else 0)
        return 0

    @model_validator(mode="after")
    def _check_kind_fields(self) -> FeatureSpec:
        if self.source.startswith("oracle_"):
            raise ValueError("oracle_* columns are ground truth for evaluation, never features")
        # (compared with the defaults, not `model_fields_set`: a manifest's spec dumps every field)
        changed = {n for n, info in type(self).model_fields.items() if getattr(self, n) != info.default}
        if self.kind != "vector":
            for f in ("dim", "normalize", "missing", "train_noise"):
                if f in changed:
                    raise ValueError(f"`{f}` applies to vector features, not to kind '{self.kind}'")
        if self.kind == "dense":
            for f in ("hash_size", "vocabulary", "embedding_dim", "max_len", "table"):
                if getattr(self, f) is not None:
                    raise ValueError(f"`{f}` applies to categorical features, not to kind 'dense'")
            return self
        if self.kind == "vector":
            for f in ("hash_size", "vocabulary", "max_len", "table", "stats", "clip"):
                if getattr(self, f) is not None:
                    raise ValueError(f"`{f}` does not apply to kind 'vector'")
            for f in ("default", "log", "value_type", "pooling"):
                if f in changed:
                    raise ValueError(f"`{f}` does not apply to kind 'vector'")
            if self.dim is None:
                raise ValueError("a 'vector' feature needs `dim` (values per row)")
            if self.embedding_dim is None:
                raise ValueError("a 'vector' feature needs `embedding_dim` (the width of its projection)")
            return self
        if self.hash_size is None and self.vocabulary is None:
            raise ValueError(f"a '{self.kind}' feature needs `hash_size` or `vocabulary`")
        if self.embedding_dim is None:
            raise ValueError(f"a '{self.kind}' feature needs `embedding_dim`")
        if self.kind in ("multi_id", "sequence") and self.max_len is None:
            raise ValueError(f"a '{self.kind}' feature needs `max_len`")
        if self.kind == "id" and self.max_len is not None:
            raise ValueError("`max_len` applies to multi_id and sequence features")
        if self.vocabulary is not None:
            if len(set(self.vocabulary)) != len(self.vocabulary):
                raise ValueError("`vocabulary` has duplicate values")
            want = str if self.value_type == "string" else int
            if not all(isinstance(v, want) and not isinstance(v, bool) for v in self.vocabulary):
                raise ValueError(f"`vocabulary` values must be {self.value_type}s (value_type)")
        return self

    @property
    def num_rows(self) -> int:
        """Rows of this feature's table, including the reserved row 0."""
        if self.vocabulary is not None:
            return len(self.vocabulary) + 1
        assert self.hash_size is not None
        return self.hash_size


def dense_layout(features: Sequence[FeatureSpec]) -> dict[str, tuple[int, int]]:
    """Feature name -> (first column, width) in the dense input: the scalar features in order, then
    each vector feature's block. The one definition the transform, the model and the towers share."""
    out: dict[str, tuple[int, int]] = {}
    col = 0
    for f in [*(f for f in features if f.kind == "dense"), *(f for f in features if f.kind == "vector")]:
        out[f.name] = (col, f.dense_width)
        col += f.dense_width
    return out


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


class TaskSpec(_Strict):
    """One prediction task.

    binary  a probability with a logistic head. ``label`` is a column, or a list of columns whose
            product is the label (ESMM's CTCVR label is click AND conversion).
            ``product_of`` makes a derived task with no head of its own: its probability is the
            product of other tasks' probabilities (``ctcvr = ctr * cvr``), and its loss is what trains
            them; ESMM trains CVR over all impressions this way.
            ``eval_on`` restricts evaluation rows (CVR is evaluated on clicked rows only).
    hazard  a discrete-time hazard over ``grid`` (interval boundaries t_0 < ... < t_L in ``unit``),
            labelled by ``interval_column`` (0-based interval of the event or censoring) or by
            ``time_column`` (a duration in ``unit``, binned on the grid: `targets.interval_from_time`)
            and ``event_column`` (1 = event, 0 = censored), rows weighted by ``weight_column``.
            With ``time_column`` the grid may be ``grid_quantiles: L`` instead: 0 and the quantiles
            of the training rows' event times, resolved once when training starts and written into
            the run's recipe as a concrete ``grid`` (`recsys_mtl.label_counts.resolve_grids`).
            ``label_cutoff`` says what the labels of training rows may reveal: "training_end" (the
            default, the product's creative-day subjects) censors them as known at the end of the
            last training day, "none" takes them as given (each row's follow-up is known, e.g. one
            row per patient). ``subject_column`` identifies one survival subject (rows sharing it
            share the label; evaluation counts each subject once); `Recipe.subject_column` gives
            the effective one.
    """

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    kind: Literal["binary", "hazard"]
    loss_weight: float = Field(default=1.0, ge=0)
    category: str | None = Field(default=None, description="Meta-category for HoME's hierarchy.")
    oracle: str | None = Field(default=None, description="Oracle column prefix; default oracle_<name>.")
    trains_shared: bool = Field(
        default=True,
        description="False: the task's loss trains only its own tower and head; the embeddings, "
        "bottom and experts it reads are trained by the other tasks (its tower input is detached).",
    )
    tower_features: list[str] = Field(
        default_factory=list,
        description="Dense features fed straight into this task's tower beside the backbone's "
        "output (a side input): with trains_shared false, a task that must generalise from a few "
        "statistics (a hazard from the creative's exposure and CTR so far) reads them directly "
        "instead of through ids it could memorise.",
    )
    reads_backbone: bool = Field(
        default=True,
        description="False: the task's tower reads only its tower_features, not the shared "
        "representation (a small model of its own inside the artifact; no gradient to the shared "
        "layers either, and the backbone builds no gate or experts for it). Needs tower_features.",
    )
    # --- binary ---
    label: str | list[str] | None = None
    product_of: list[str] | None = None
    eval_on: str | None = None
    train_on: str | None = Field(
        default=None,
        description="Column that must be set for a row to count in this task's loss (the task's "
        "sample space, as PLE trains each task on its own). The classic single-task CVR trains on "
        "click; ESMM instead trains CVR over all impressions through CTCVR.",
    )
    # --- hazard ---
    grid: list[float] | None = None
    grid_quantiles: int | None = Field(
        default=None,
        ge=1,
        description="With time_column, instead of grid: this many intervals, bounded by 0 and the "
        "quantiles of the training rows' event times (resolved when training starts).",
    )
    unit: Literal["hours", "days", "weeks", "months", "years"] = Field(
        default="days", description="Unit of grid and time_column; a month is 30.4375 days, a year 365.25."
    )
    label_cutoff: Literal["training_end", "none"] | None = Field(
        default=None,
        description="training_end (default): labels as known at the end of the last training day "
        "(subjects that start on a day, like the product's creative-days; no look-ahead); none: "
        "each row's follow-up is known and its label is taken as given (one row per subject).",
    )
    interval_column: str | None = None
    time_column: str | None = Field(
        default=None,
        description="Instead of interval_column: the event or censoring time in `unit`, binned on the grid.",
    )
    event_column: str | None = None
    weight_column: str | None = None
    subject_column: str | None = Field(
        default=None,
        description="Column identifying one survival subject; rows sharing it share the survival "
        "label; default: data.item_column.",
    )
    # How the L interval logits depend on the tower output h (recsys_mtl/models/heads.py):
    # "shared" (choice, the default): phi_l = b_l + w.h + v_l.h with v_l starting at zero, a
    # proportional-odds score plus per-interval deviations; "independent": phi_l = b_l + w_l.h.
    hazard_head: Literal["shared", "independent"] | None = None

    @property
    def oracle_prefix(self) -> str:
        return self.oracle or f"oracle_{self.name}"

    @property
    def label_columns(self) -> list[str]:
        if self.kind == "hazard":
            cols = (self.interval_column, self.time_column, self.event_column, self.weight_column)
            return [c for c in cols if c]
        if self.label is None:
            return []
        return [self.label] if isinstance(self.label, str) else list(self.label)

    @property
    def hazard_head_form(self) -> str:
        return self.hazard_head or "shared"

    @property
    def label_cutoff_mode(self) -> str:
        """The effective `label_cutoff` of a hazard task ("training_end" unless set)."""
        return self.label_cutoff or "training_end"

    @property
    def num_intervals(self) -> int:
        if self.grid is None:
            raise ValueError(
                f"task '{self.name}': `grid_quantiles` is resolved from the training data when training "
                "starts; use the recipe a run wrote (RUN/run.json), which holds the concrete `grid`"
            )
        return len(self.grid) - 1

    @model_validator(mode="after")
    def _check_kind_fields(self) -> TaskSpec:
        if self.kind == "binary":
            hazard_only = ("grid", "grid_quantiles", "interval_column", "time_column", "event_column")
            for f in (*hazard_only, "weight_column", "subject_column", "hazard_head", "label_cutoff"):
                if getattr(self, f) is not None:
                    raise ValueError(f"`{f}` applies to hazard tasks, not to kind 'binary'")
            if self.label is None:
                raise ValueError("a binary task needs `label` (a column or a list of columns)")
            if self.product_of is not None and len(self.product_of) < 2:
                raise ValueError("`product_of` needs at least two tasks")
            return self
        for f in ("label", "product_of", "eval_on", "train_on"):
            if getattr(self, f) is not None:
                raise ValueError(f"`{f}` applies to binary tasks, not to kind 'hazard'")
        if (self.interval_column is None) == (self.time_column is None) or self.event_column is None:
            raise ValueError(
                "a hazard task needs `interval_column` (0-based interval indexes) or `time_column` "
                "(durations in `unit`), exactly one of them, and `event_column`"
            )
        if self.grid_quantiles is not None:
            if self.grid is not None:
                raise ValueError("give either `grid` or `grid_quantiles`, not both")
            if self.time_column is None:
                raise ValueError(
                    "`grid_quantiles` needs `time_column`: the quantiles are of event times, which "
                    "interval indexes do not have"
                )
            return self
        if self.grid is None or len(self.grid) < 2:
            raise ValueError(
                "a hazard task needs `grid` (at least two increasing boundaries) or, with "
                "`time_column`, `grid_quantiles`"
            )
        if any(b <= a for a, b in zip(self.grid, self.grid[1:], strict=False)):
            raise ValueError("`grid` boundaries must be strictly increasing")
        return self


# --------------------------------------------------------------------------------------------
# Models (the options are read by recsys_mtl.models; "choice" marks a default the papers leave open)
# --------------------------------------------------------------------------------------------


class _ModelBase(_Strict):
    # DCN-v2 cross layers on the flat input, before the bottom MLP (recsys_mtl/models/cross.py):
    # explicit pairwise feature products, e.g. user x creative. 0 = none. Not for dtrn, whose
    # backbone builds a representation per task instead of reading one flat input.
    cross_layers: int = Field(default=0, ge=0, le=8)
    cross_rank: int | None = Field(default=None, ge=1, description="Low rank of each cross matrix.")
    bottom_hidden: list[int] = Field(default_factory=list, description="Shared MLP before the backbone.")
    tower_hidden: list[int] = Field(default_factory=lambda: [64])
    dropout: float = Field(default=0.0, ge=0, lt=1)


class SharedBottomOptions(_ModelBase):
    type: Literal["shared_bottom"] = "shared_bottom"
    hidden: list[int] = Field(default_factory=lambda: [256, 128])


class MMoEOptions(_ModelBase):
    type: Literal["mmoe"] = "mmoe"
    num_experts: int = Field(default=4, ge=1)
    expert_hidden: list[int] = Field(default_factory=lambda: [128, 64])


class PLEOptions(_ModelBase):
    type: Literal["ple"] = "ple"
    num_levels: int = Field(default=2, ge=1)
    specific_experts: int = Field(default=1, ge=1)
    shared_experts: int = Field(default=2, ge=1)
    expert_hidden: list[int] = Field(default_factory=lambda: [128, 64])


class HoMEOptions(_ModelBase):
    type: Literal["home"] = "home"
    expert_hidden: list[int] = Field(default_factory=lambda: [128, 64])
    shared_experts: int = Field(default=2, ge=1)
    category_experts: int = Field(default=1, ge=0)
    task_experts: int = Field(default=1, ge=0)
    # fix 1, expert collapse: norm + Swish after each expert (choice: batch norm by default)
    expert_norm: Literal["batch", "layer", "none"] = "batch"
    # fix 2, expert degradation: the two-level hierarchy over task categories
    hierarchy: bool = True
    # fix 3, expert underfitting: feature-gate (low rank r) and self-gate
    feature_gate: bool = True
    feature_gate_rank: int = Field(default=8, ge=1)
    # choice: A starts at zeros, so the feature-gate 2*sigmoid(x B A) starts as the identity
    feature_gate_zero_init: bool = True
    self_gate: bool = True


class DTRNOptions(_ModelBase):
    type: Literal["dtrn"] = "dtrn"
    task_embedding_dim: int = Field(default=8, ge=1)
    attention_hidden: int = Field(default=32, ge=1)
    senet_reduction: int = Field(default=2, ge=1)
    # choice: interests by target attention of the candidate item over each sequence ("mean":
    # plain masked mean, no attention), modulated per (task, behaviour) by FiLM from a
    # hypernetwork ("none": one attention shared unchanged by all tasks)
    interest_pooling: Literal["target_attention", "mean"] = "target_attention"
    interest_modulation: Literal["film", "none"] = "film"
    with_mmoe: bool = False
    num_experts: int = Field(default=4, ge=1)
    expert_hidden: list[int] = Field(default_factory=lambda: [128, 64])

    @field_validator("cross_layers")
    @classmethod
    def _no_cross(cls, v: int) -> int:
        if v:
            raise ValueError("dtrn has no flat input to cross (each task builds its own); use 0")
        return v


ModelSpec = Annotated[
    SharedBottomOptions | MMoEOptions | PLEOptions | HoMEOptions | DTRNOptions,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


class OptimizerSpec(_Strict):
    name: Literal["adam", "adagrad", "sgd", "rowwise_adagrad", "adamw"]
    lr: float = Field(gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    eps: float = Field(default=1e-8, gt=0)


class TrainingSpec(_Strict):
    batch_size: int = Field(default=2048, ge=1)
    epochs: int = Field(default=1, ge=1)
    dense_optimizer: OptimizerSpec = Field(default_factory=lambda: OptimizerSpec(name="adam", lr=1e-3))
    sparse_optimizer: OptimizerSpec = Field(
        default_factory=lambda: OptimizerSpec(name="rowwise_adagrad", lr=0.05)
    )
    # gloo (CPU) lacks reduce-scatter, so row-wise sharding is only allowed on NCCL.
    sharding_types: list[Literal["table_wise", "data_parallel", "row_wise", "column_wise"]] = Field(
        default_factory=lambda: ["table_wise", "data_parallel"]
    )
    shuffle_buffer: int = Field(default=100_000, ge=0)
    seed: int = 0
    checkpoint_every: int = Field(default=1000, ge=1, description="Steps between checkpoints.")
    eval_fraction: float = Field(default=0.1, gt=0, lt=1)
    early_stopping_patience: int | None = Field(
        default=None,
        ge=1,
        description="Validate on the held-out days after every epoch (mean AUC of binary tasks and "
        "C-index of hazard tasks), stop once it has not improved for this many epochs, and end "
        "with the best epoch's weights; `epochs` is then the maximum. None: no early stopping.",
    )
    omp_wait: str = Field(
        default="short-spin",
        pattern=OMP_WAIT_PATTERN,
        description="How torch's OpenMP threads wait at a barrier (recsys_mtl/threads.py): short-spin "
        "(GOMP_SPINCOUNT=10000, the default), passive (sleep at once: the most robust beside other "
        "CPU-bound work, slower on a quiet machine), libgomp (its own long spin), inherit (the "
        "environment decides), or a spin count. Read by the command line before torch loads; "
        "OMP_WAIT_POLICY / GOMP_SPINCOUNT / RECSYS_MTL_OMP_POLICY in the environment win.",
    )
    adapt_threads: bool = Field(
        default=True,
        description="Time every step and use fewer intra-op threads while other processes compete "
        "for the CPUs (recsys_mtl/thread_governor.py): the threads given (--threads, or the CPUs "
        "available) are the most it uses. Single-process runs only; with --nproc each rank keeps "
        "its share. False: a fixed count.",
    )
    allow_untrained_tasks: bool = Field(
        default=False,
        description="False: a run in which a task with a loss weight keeps no training label (or "
        "has a loss of exactly 0 for a whole epoch) fails, naming the task, the reason and the fix. "
        "True: it trains anyway with a warning, and that task's head stays as initialised or "
        "warm-started (e.g. a short smoke-test window shorter than a weekly grid's first week).",
    )


class DataSpec(_Strict):
    """Columns that are not features or task labels but that the pipeline needs."""

    user_column: str = Field(default="user_id", description="GAUC groups and the A/B unit.")
    item_column: str = Field(
        default="creative_id", description="The item (ad creative); survival subjects default to it."
    )
    partition: str = Field(default="dt", description="Hive partition key of the day directories.")
    holdout_items: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of items (by a stable hash of `item_column`) never trained on: their "
        "rows are dropped from training and validation, and evaluation reports them as new items "
        "beside the known ones (a cold-start measurement; keep 0 for a model you ship).",
    )


class ValidationSpec(_Strict):
    """Checks the nightly job runs on a new day's partition before it trains on it.

    Label rates and null rates are checked against fixed bounds where given; otherwise against the
    recent days (`learn_from_days`): a rate must stay within `learned_tolerance` (relative) of the
    recent mean, or within `learned_min_abs` of it for rates near zero.
    """

    min_rows: int = Field(default=1000, ge=1, description="Fewer rows than this fails validation.")
    max_rows: int | None = Field(default=None, ge=1)
    label_rates: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Label column -> [min, max] share of 1s (overrides learning)."
    )
    max_null_rate: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Largest share of nulls in a scalar (id, dense) feature column; list features "
        "(a null list is a user without history) are bounded only through `null_rates`.",
    )
    null_rates: dict[str, float] = Field(
        default_factory=dict, description="Column -> largest share of nulls (overrides max_null_rate)."
    )
    learn_from_days: int = Field(default=7, ge=0, description="Recent days label rates are compared with.")
    learned_tolerance: float = Field(
        default=0.5, gt=0, description="Allowed relative change of a label rate."
    )
    learned_min_abs: float = Field(default=0.002, ge=0)


class GateSpec(_Strict):
    """The nightly quality gate: per task AUC (binary) or C-index (hazard) on the held-out day.

    With a model serving, the difference new - serving gets a paired cluster-bootstrap interval
    (`pipelines.gate`); the interval rule rejects a task only when the interval's upper end is below
    -tolerance, i.e. when the evidence says the new model is worse by more than the tolerance. The
    first model ever is judged against the floor the same way. The point rule compares the estimate
    alone (the rule before intervals; kept for comparison, e.g. in bench/gate_calibration.py).
    """

    rule: Literal["interval", "point"] = Field(
        default="interval", description="interval: judge the interval's upper end; point: the estimate."
    )
    confidence: float = Field(
        default=0.95,
        ge=0.5,
        lt=1.0,
        description="Two-sided level of the interval; its upper end is a (1 + c) / 2 one-sided bound.",
    )
    resamples: int = Field(default=1000, ge=100, description="Bootstrap resamples per task.")
    seed: int = Field(
        default=0, ge=0, description="Bootstrap seed: the same data and seed, the same verdict."
    )
    tolerance: float = Field(default=0.005, ge=0, description="Default allowed drop of AUC / C-index.")
    tolerances: dict[str, float] = Field(default_factory=dict, description="Task -> allowed drop.")
    floor: float = Field(default=0.55, ge=0, le=1, description="Default floor for the first model.")
    floors: dict[str, float] = Field(default_factory=dict, description="Task -> floor for the first model.")
    tasks: list[str] | None = Field(
        default=None,
        description="Tasks judged (default: every task; one undefined on the day is then skipped, "
        "while a task named here that cannot be measured rejects).",
    )
    report_only: list[str] = Field(
        default_factory=list, description="Tasks measured and shown but never rejecting a model."
    )

    def tolerance_for(self, task: str) -> float:
        return self.tolerances.get(task, self.tolerance)

    def floor_for(self, task: str) -> float:
        return self.floors.get(task, self.floor)

    def task_names(self) -> dict[str, list[str]]:
        """Every place the gate names tasks, by field (checked against the recipe's tasks)."""
        return {
            "tasks": list(self.tasks or []),
            "report_only": list(self.report_only),
            "tolerances": list(self.tolerances),
            "floors": list(self.floors),
        }


class NightlySpec(_Strict):
    """What `recsys-mtl nightly --date D` does with this recipe (README, "The nightly job")."""

    window_days: int = Field(default=7, ge=1, description="Train on the days [D - window, D - 1].")
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    gate: GateSpec = Field(default_factory=GateSpec)
    checkpoint_every: int = Field(default=200, ge=1, description="Steps between checkpoints (resume).")


class CalibrationSpec(_Strict):
    """How the binary tasks' probabilities are calibrated after training (`recsys_mtl.calibration`):
    a strictly increasing map per binary head task, fitted on the held-out rows (`recsys-mtl train`:
    the --eval-days; the nightly job: the validation day) and carried in the exported artifact;
    product tasks are the product of their calibrated factors."""

    method: Literal["isotonic", "platt", "none"] = Field(
        default="isotonic",
        description="isotonic: pool-adjacent-violators, interpolated in logit space; platt: logistic "
        "regression on the logit; none: no map (the artifact is marked uncalibrated).",
    )
    folds: int = Field(
        default=2, ge=2, le=10, description="Out-of-fold folds (by user) of the reported after-numbers."
    )
    min_positives: int = Field(
        default=20,
        ge=1,
        description="Fewest positive (and negative) rows a task needs for a map; fewer: uncalibrated.",
    )


class Recipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    features: list[FeatureSpec] = Field(min_length=1)
    tasks: list[TaskSpec] = Field(min_length=1)
    model: ModelSpec = Field(default_factory=MMoEOptions)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    nightly: NightlySpec = Field(default_factory=NightlySpec)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)

    @field_validator("features")
    @classmethod
    def _unique_features(cls, v: list[FeatureSpec]) -> list[FeatureSpec]:
        dup = [n for n, c in Counter(f.name for f in v).items() if c > 1]
        if dup:
            raise ValueError(f"duplicate feature names: {dup}")
        return v

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[TaskSpec]) -> list[TaskSpec]:
        dup = [n for n, c in Counter(t.name for t in v).items() if c > 1]
        if dup:
            raise ValueError(f"duplicate task names: {dup}")
        return v

    @model_validator(mode="after")
    def _check_cross_references(self) -> Recipe:
        # Features sharing a table must agree on its shape, or their rows would not line up.
        tables: dict[str, FeatureSpec] = {}
        for f in self.sparse_features:
            first = tables.setdefault(f.table_name, f)
            for attr in ("num_rows", "embedding_dim", "value_type"):
                if getattr(first, attr) != getattr(f, attr):
                    raise ValueError(
                        f"features '{first.name}' and '{f.name}' share table '{f.table_name}' "
                        f"but differ in {attr}: {getattr(first, attr)} vs {getattr(f, attr)}"
                    )
            if first.vocabulary != f.vocabulary:
                raise ValueError(f"features sharing table '{f.table_name}' must share `vocabulary`")
        names = {t.name for t in self.tasks}
        dense = set(self.dense_layout)
        for t in self.tasks:
            for name in t.tower_features:
                if name not in dense:
                    raise ValueError(
                        f"task '{t.name}': tower_features names '{name}', which is not a dense or "
                        f"vector feature of the recipe (those: {sorted(dense)})"
                    )
            if t.tower_features and t.product_of:
                raise ValueError(f"task '{t.name}': a product_of task has no tower for tower_features")
            if not t.reads_backbone and not t.tower_features:
                raise ValueError(f"task '{t.name}': reads_backbone false needs tower_features to read")
            if len(set(t.tower_features)) != len(t.tower_features):
                raise ValueError(f"task '{t.name}': tower_features lists a feature twice")
            for dep in t.product_of or []:
                if dep not in names or dep == t.name:
                    raise ValueError(f"task '{t.name}': product_of names unknown task '{dep}'")
                if self.task(dep).kind != "binary" or self.task(dep).product_of:
                    raise ValueError(f"task '{t.name}': product_of '{dep}' must be a binary task with a head")
        for field_name, gate_tasks in self.nightly.gate.task_names().items():
            unknown = sorted(set(gate_tasks) - names)
            if unknown:
                raise ValueError(
                    f"nightly.gate.{field_name} names unknown task(s) {unknown} (tasks: {sorted(names)})"
                )
        if not any(not t.product_of for t in self.tasks):
            raise ValueError("at least one task must have a head of its own (no product_of)")
        if not any(t.reads_backbone for t in self.tasks if not t.product_of):
            raise ValueError("at least one task must read the backbone (reads_backbone: true)")
        return self

    # ---- convenience views ----
    @property
    def sparse_features(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.is_sparse]

    @property
    def pooled_features(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.kind in ("id", "multi_id")]

    @property
    def sequence_features(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.kind == "sequence"]

    @property
    def dense_features(self) -> list[FeatureSpec]:
        """The scalar dense features (not vectors)."""
        return [f for f in self.features if f.kind == "dense"]

    @property
    def vector_features(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.kind == "vector"]

    @property
    def dense_layout(self) -> dict[str, tuple[int, int]]:
        """Feature name -> (first column, width) in the model's dense input (`dense_layout`)."""
        return dense_layout(self.features)

    @property
    def head_tasks(self) -> list[TaskSpec]:
        """Tasks with a head of their own (derived `product_of` tasks have none)."""
        return [t for t in self.tasks if not t.product_of]

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def subject_column(self, task: TaskSpec | str) -> str:
        """The column identifying a hazard task's survival subjects: the task's `subject_column`, or
        else `data.item_column`. Evaluation and the data summary group the task's rows by it; it is
        not a label column, so data without it is still readable (each row is then its own subject)."""
        t = self.task(task) if isinstance(task, str) else task
        if t.kind != "hazard":
            raise ValueError(f"task '{t.name}' is not a hazard task: it has no survival subjects")
        return t.subject_column or self.data.item_column

    def label_columns(self) -> list[str]:
        """Every column a task reads (labels, events, weights, eval filters), deduplicated."""
        cols: list[str] = []
        for t in self.tasks:
            for c in [*t.label_columns, *(c for c in (t.eval_on, t.train_on) if c)]:
                if c not in cols:
                    cols.append(c)
        return cols

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _format_errors(err: ValidationError, source: str) -> str:
    return "\n".join([f"invalid recipe {source}:", *(f"  {line}" for line in field_errors(err))])


def keep_tasks(data: dict[str, Any], names: Collection[str]) -> dict[str, Any]:
    """A recipe dict (`Recipe.to_dict()` or parsed YAML) narrowed to the tasks `names`, in place:
    the other tasks go, and so do the nightly gate's per-task entries that name them (a recipe
    naming a task it lacks is refused, so a narrowed copy must drop them too)."""
    keep = set(names)
    data["tasks"] = [t for t in data.get("tasks", []) if t.get("name") in keep]
    gate = (data.get("nightly") or {}).get("gate") or {}
    for key in ("tolerances", "floors"):
        if isinstance(gate.get(key), dict):
            gate[key] = {t: v for t, v in gate[key].items() if t in keep}
    for key in ("tasks", "report_only"):
        if isinstance(gate.get(key), list):
            gate[key] = [t for t in gate[key] if t in keep]
    if gate.get("tasks") == []:
        gate["tasks"] = None  # it named only tasks that are gone: judge every task that is left
    return data


def recipe_from_dict(data: Any, source: str = "<dict>") -> Recipe:
    """Validate a parsed recipe; raise RecipeError naming every bad field's path."""
    if not isinstance(data, dict):
        raise RecipeError(f"invalid recipe {source}: expected a mapping at the top level")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format_errors(e, source)) from None


def load_recipe(path: str | Path) -> Recipe:
    """Load and validate a YAML recipe file."""
    return recipe_from_dict(read_yaml(path, "recipe", RecipeError), str(Path(path)))
