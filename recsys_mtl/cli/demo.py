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
  recsys-mtl demo --out demo-out --rows 600000 --days 4 --nproc 2
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from recsys_mtl.cli.common import DEFAULT_RECIPE, DEFAULT_SERVING_CONFIG, add_recipe_argument, fail
from recsys_mtl.exit_codes import EXIT_ERROR

log = logging.getLogger("recsys_mtl.demo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="working directory (replaced on each run)")
    p.add_argument("--rows", type=int, default=600_000, help="rows to generate (default 600000)")
    p.add_argument("--days", type=int, default=4, help="day partitions; the last is held out (default 4)")
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
        recipe_path, data, run_dir, nproc=args.nproc, overwrite=True, epochs=args.epochs or None
    )
    rc = cli_main(train_args)  # with --nproc > 1 it launches its own ranks
    if rc != 0:
        return rc
    info = read_run_info(run_dir)
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
    with running_server(out / "registry", cfg_path, out / "server.log") as server:
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
