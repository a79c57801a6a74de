"""Run the main job end to end on generated data, as far as the product is built:

  1. generate synthetic ads data with ground truth (oracle_* columns)
  2. check it against the recipe and measure the oracle (the best any model can reach)
  3. train the recipe's model (HoME by default) with --nproc sharded processes (TorchRec, gloo)
  4. evaluate it on the held-out last day against the oracle and print the per-task metrics
  5. export it (TorchScript, with an int8 build beside it) into a local registry and promote it
  6. start the scoring server on it (configs/serving.yaml: an fp32 vs int8 A/B experiment), send
     a sample request of candidates for one user, print every task's scores from the HTTP
     response (and their largest difference from the offline scorer), and stop the server

`make serve` keeps a server running on the demo's registry afterwards.

example:
  recsys-mtl demo --out demo-out --rows 800000 --days 8 --nproc 2

Why 8 days: the hazard tasks learn from each creative's age and statistics so far, and their
labels are censored at the end of the last training day. With 3 training days (the demo before)
hazard_short ranked the held-out day's creatives worse than chance (lift -0.11); with 7 it
ranks them well (docs/BENCHMARKS.md, "The demo").
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from recsys_mtl.cli.common import DEFAULT_RECIPE, DEFAULT_SERVING_CONFIG, add_recipe_argument, fail
from recsys_mtl.exit_codes import EXIT_ERROR

log = logging.getLogger("recsys_mtl.demo")

DEMO_ROWS = 800_000
DEMO_DAYS = 8  # 7 training days: enough survival history for the hazard tasks to rank (see above)

# One line per number of the held-out table the training step prints, for a first-time reader.
METRICS_LEGEND = """\
How to read the table above (every number is on the held-out day, which training never saw):
  AUC        chance that a random positive row scores above a random negative one (0.5 = coin)
  GAUC       the AUC within each user, averaged over users by their rows (ranking for one user)
  logloss    mean negative log-likelihood of the labels (lower is better)
  ECE        mean |predicted - observed| rate over 10 probability bins (0 = calibrated)
  pred/obs   mean predicted probability / observed rate (1 = right on average)
  oracleAUC  the AUC of the true probabilities the generator drew the labels from (the ceiling)
  lift       (AUC - 0.5) / (oracleAUC - 0.5): 0 = chance, 1 = as good as the truth; "vs truth"
             ranks against the true probabilities instead of one draw of the labels
  C-index    hazards: chance that of two creatives the one discontinued first has the higher
             predicted risk (0.5 = coin); td-AUC: how well the risk separates creatives that
             stop within the grid's horizon from those that outlive it (0.5 = coin)
  IBS        integrated Brier score of the predicted survival curves (lower is better);
             S err = |predicted - observed survival| at the horizon
  calibration  ECE and pred/obs before -> after the probability map fitted on the held-out day
             (after = out-of-fold: each half of the users mapped by the other half's map)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="working directory (replaced on each run)")
    p.add_argument("--rows", type=int, default=DEMO_ROWS, help=f"rows to generate (default {DEMO_ROWS})")
    p.add_argument(
        "--days", type=int, default=DEMO_DAYS, help=f"day partitions, the last held out (default {DEMO_DAYS})"
    )
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the recipe's)")
    p.add_argument(
        "--serving-config",
        type=Path,
        default=DEFAULT_SERVING_CONFIG,
        help="serving config for step 6 (default: configs/serving.yaml)",
    )
    add_recipe_argument(p)


def run(args: argparse.Namespace) -> int:
    from recsys_mtl.cli import main as cli_main
    from recsys_mtl.cli.train import train_command
    from recsys_mtl.data_summary import format_summary, summarize
    from recsys_mtl.partitions import DataError
    from recsys_mtl.recipe import RecipeError, load_recipe
    from recsys_mtl.run import METRICS_FILE, read_run_info
    from recsys_mtl.synth import SynthConfig, generate

    out = Path(args.out)
    data, run_dir = out / "data", out / "run"
    recipe_path = Path(args.recipe or DEFAULT_RECIPE)
    t0 = time.perf_counter()
    try:
        recipe = load_recipe(recipe_path)
        log.info("step 1/6: generating %s rows over %d day(s) into %s", f"{args.rows:,}", args.days, data)
        generate(SynthConfig(rows=args.rows, days=args.days, seed=args.seed), data, overwrite=True)
        log.info("step 2/6: checking the data against recipe '%s' and measuring the oracle", recipe.name)
        summary = summarize(recipe, data)
    except (RecipeError, DataError) as e:
        return fail(e)
    print(format_summary(summary))

    log.info(
        "step 3/6: training %s on %d process(es), evaluating on the last day", recipe.model.type, args.nproc
    )
    train_args = train_command(
        recipe_path,
        data,
        run_dir,
        nproc=args.nproc,
        overwrite=True,
        epochs=args.epochs or None,
        # fewer days than the default leave the weekly hazard no full week of labels: a quick demo
        # trains the other tasks and says so, instead of stopping at that task
        allow_untrained_tasks=args.days < DEMO_DAYS,
    )
    rc = cli_main(train_args)  # with --nproc > 1 it launches its own ranks
    if rc != 0:
        return rc
    info = read_run_info(run_dir)
    print(METRICS_LEGEND, end="")
    print(lift_verdict(json.loads((run_dir / METRICS_FILE).read_text())))
    log.info("step 4/6: metrics on the held-out day are above (and in %s)", run_dir / METRICS_FILE)
    log.info("step 5/6: exporting to the registry %s (fp32 + int8 build), promoting", out / "registry")
    from recsys_mtl.export import export_run

    exported = export_run(run_dir, out / "registry", recipe.name, promote=True, int8_companion=True)
    print(f"exported version {exported.version} to {out / 'registry' / recipe.name}")
    log.info("step 6/6: starting the scoring server and sending a sample request")
    try:
        print(_serve_sample(out, recipe.name, args.serving_config, data, info["data"]["eval_days"][-1]))
    except Exception as e:  # the server's log says why
        return fail(RuntimeError(f"serving step failed: {e}"), code=EXIT_ERROR)
    print(
        f"\ntrained {recipe.model.type} on {info['world_size']} process(es): {info['steps']} steps, "
        f"{info['samples_per_s']:,.0f} samples/s; the metrics above are on the held-out day "
        f"{', '.join(info['data']['eval_days'])} (also in {run_dir / METRICS_FILE})"
    )
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; data in {data}, run in {run_dir}")
    return 0


def lift_verdict(metrics: dict[str, Any]) -> str:
    """One line: each task's label lift on the held-out day, and whether every task beats chance.

    A newcomer's first screen should say plainly whether the model learned; a task at or below
    chance is named, not hidden in a table.
    """
    lifts = {t: m.get("oracle_lift") for t, m in metrics.get("tasks", {}).items()}
    shown = ", ".join(f"{t} {v:+.2f}" if isinstance(v, float) else f"{t} n/a" for t, v in lifts.items())
    weak = [t for t, v in lifts.items() if not (isinstance(v, float) and v > 0)]
    if weak:
        return f"lift on the held-out day: {shown}; NOT above chance: {', '.join(weak)}"
    return f"lift on the held-out day: {shown}; every task ranks better than chance"


def _serve_sample(out: Path, name: str, serving_config: Path, data: Path, day: str, n: int = 8) -> str:
    """Start `recsys-mtl serve` on the demo registry, POST one user's request with `n` candidates
    from the held-out day (user and context features sent once, item features per candidate),
    check the scores against the offline scorer, stop the server; a compact table of the scores."""
    import numpy as np
    import orjson
    import pyarrow.parquet as pq
    import yaml

    from recsys_mtl.devtools.server_process import running_server
    from recsys_mtl.loader import load_model

    table = pq.read_table(next((data / f"dt={day}").glob("*.parquet")))
    model = load_model(out / "registry", name)
    user = table.column("user_id")[0].as_py()
    rows = table.slice(0, n)
    request_level = {f.source for f in model.transform.features if f.group in ("user", "context")}
    body = {
        "user_id": user,
        "features": {c: rows.column(c)[0].as_py() for c in request_level},
        "candidates": {c: rows.column(c).to_pylist() for c in model.input_columns if c not in request_level},
    }
    offline = {c: rows.column(c).combine_chunks() for c in model.input_columns}
    for c in request_level:  # the offline rows as the server sees them: one user for all candidates
        offline[c] = offline[c].take(np.zeros(n, dtype=np.int64))
    cfg = yaml.safe_load(serving_config.read_text())
    cfg["registry"] = str(out / "registry")
    cfg_path = out / "serving.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # the worker default of `recsys-mtl serve` (one per runtime.torch_threads + 1 CPUs)
    with running_server(out / "registry", cfg_path, out / "server.log", workers=None) as server:
        t0 = time.perf_counter()
        resp = server.client.post(
            "/score", content=orjson.dumps(body), headers={"content-type": "application/json"}
        )
        ms = (time.perf_counter() - t0) * 1e3
        if resp.status_code != 200:
            raise RuntimeError(f"POST /score answered {resp.status_code}: {resp.text[:500]}")
        got = resp.json()
        lines = [
            f"server {server.url}: POST /score, {n} candidates for user {user} from day {day}, {ms:.0f} ms: "
            f"model {got['model']} v{got['version']} ({got['build']}), experiment {got['experiment']}, "
            f"variant {got['variant']}",
        ]
    cols = {**got["scores"], **{f"{k}_risk": v["risk"] for k, v in got["survival"].items()}}
    lines.append(" ".join(["creative".rjust(9), *(c.rjust(17) for c in cols)]))
    creatives = rows.column("creative_id").to_pylist()
    for i in range(n):
        lines.append(" ".join([str(creatives[i]).rjust(9), *(f"{cols[c][i]:17.4f}" for c in cols)]))
    # parity: the offline scorer with the build the server used (the variant may be the int8 one)
    want = load_model(out / "registry", name, got["version"], int8=got["build"] == "int8").score(offline)
    diff = max(float(np.abs(np.asarray(v) - want[k]).max()) for k, v in cols.items())
    lines.append(f"max |server - offline scorer| over these scores: {diff:.2g}")
    lines.append("(risk = P(the creative is discontinued within the grid's horizon); server stopped)")
    return "\n".join(lines)
