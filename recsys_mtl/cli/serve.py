"""Serve registry models over HTTP: POST /score (JSON or Arrow IPC), A/B variants from a serving
config, hot reload when current.json or the config changes, /healthz /readyz /metrics /models and
the OpenAPI page at /docs.

The serving config (see configs/serving.yaml) names the experiments, their variants' models and
flags, and runtime settings (torch threads, candidate limits, micro-batching). The admin token for
POST /admin/reload and forced variants is read from the environment variable the config names
(default RECSYS_MTL_ADMIN_TOKEN); without it, admin actions are refused.

examples:
  recsys-mtl serve --registry registry --config configs/serving.yaml --port 8000
  curl -s localhost:8000/models
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recsys_mtl.cli.common import fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="serving config YAML (A/B variants, runtime)")
    p.add_argument("--registry", type=Path, help="registry root (default: the config's `registry`)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs latency)")


def run(args: argparse.Namespace) -> int:
    from serving.config import ConfigError, load_config

    try:  # a bad config fails here, before torch and the models load
        cfg = load_config(args.config)
    except ConfigError as e:
        return fail(e)
    if args.registry is None and cfg.registry is None:
        return fail(ValueError("no registry: pass --registry or set `registry` in the config"))
    if args.registry is not None and not args.registry.is_dir():
        return fail(FileNotFoundError(f"{args.registry}: registry directory does not exist"))

    from serving.server import run as serve

    try:
        serve(args.config, args.registry, host=args.host, port=args.port, access_log=args.access_log)
    except ConfigError as e:
        return fail(e)
    return 0
