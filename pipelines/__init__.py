"""Offline pipelines (the nightly retrain-gate-publish job). Composes recsys_mtl."""
