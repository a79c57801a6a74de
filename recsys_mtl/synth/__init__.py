"""Synthetic ad-impression data with ground truth: a world of users and creatives with true CTR, CVR
and creative-discontinuation hazards, written as day-partitioned Parquet with `oracle_*` columns.

    from recsys_mtl.synth import SynthConfig, generate
    summary = generate(SynthConfig(rows=1_000_000, days=7, seed=0), Path("data"))

The generator's model, equation by equation: (docs/METHODS.md, "Synthetic data").
"""

from recsys_mtl.synth.generate import SCHEMA, OutputExistsError, generate, synth_schema
from recsys_mtl.synth.lifetimes import HazardParams, Lifetimes, ctr_weights, draw_lifetimes
from recsys_mtl.synth.world import SynthConfig, World, build_world

__all__ = [
    "SCHEMA",
    "HazardParams",
    "Lifetimes",
    "OutputExistsError",
    "SynthConfig",
    "World",
    "build_world",
    "ctr_weights",
    "draw_lifetimes",
    "generate",
    "synth_schema",
]
