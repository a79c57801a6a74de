"""Serve registry models over HTTP: POST /score (JSON or Arrow IPC), A/B variants from a serving
config, hot reload when current.json or the config changes, /healthz /readyz /metrics /models and
the OpenAPI page at /docs.

The serving config (see configs/serving.yaml) names the experiments, their variants' models and
flags, and runtime settings (torch threads, candidate limits, micro-batching). The admin token for
POST /admin/reload and forced variants is read from the environment variable the config names
(default RECSYS_MTL_ADMIN_TOKEN); without it, admin actions are refused.

Workers: `--workers N` runs N processes on the port, each a whole server (its models, inference
thread, reload watcher); connections are spread over them by the kernel. The default is one worker
per runtime.torch_threads + 1 CPUs this process may use (affinity mask, cgroup quota): each keeps
torch_threads CPUs busy in its forward and one with its event loop. Each worker loads its own
models; with several, fp32 weights are mapped from the version's weights.pt, one copy shared by
all (int8 builds: one per worker; docs/OPERATIONS.md, "Memory"). A hot reload happens in every
worker within runtime.reload_interval_s; POST /admin/reload reaches the one worker that takes it.
/metrics sums over all workers; /healthz and /models say which worker answered (pid, workers).

examples:
  recsys-mtl serve --registry registry --config configs/serving.yaml --port 8000
  recsys-mtl serve --registry registry --config configs/serving.yaml --workers 4
  curl -s localhost:8000/models
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from recsys_mtl.cli.common import fail

log = logging.getLogger("recsys_mtl.cli.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="serving config YAML (A/B variants, runtime)")
    p.add_argument("--registry", type=Path, help="registry root (default: the config's `registry`)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs latency)")
    p.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port (default: the CPUs this process may use // "
        "(runtime.torch_threads + 1), at least 1; 1 = one process, as before workers existed)",
    )


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

    if args.workers is not None and args.workers < 1:
        return fail(ValueError(f"--workers {args.workers}: must be at least 1"))
    workers = args.workers or _default_workers(cfg.runtime.torch_threads)

    from serving.server import run as serve

    try:
        status = serve(
            args.config,
            args.registry,
            host=args.host,
            port=args.port,
            access_log=args.access_log,
            workers=workers,
        )
    except ConfigError as e:
        return fail(e)
    return status


def _default_workers(torch_threads: int) -> int:
    """`recsys_mtl.threads.serving_workers`, with the reason logged (the module docstring)."""
    from recsys_mtl.threads import available_cpus, serving_workers

    cpus = available_cpus()
    n = serving_workers(torch_threads, cpus)
    log.info(
        "workers: %d (default: %s // (runtime.torch_threads %d + 1 for the event loop); --workers to choose)",
        n,
        cpus.describe(),
        torch_threads,
    )
    return n
