"""The tables of bench/serving_load.py: end-to-end over in-process ratios and the markdown report
(fixed-rate runs, saturation probes, in-process stages, attribution, soak, goals)."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from serving_load_client import RunStats
from serving_load_scenarios import BASELINE_LABEL, SOAK_SIZE


def _fmt(x: float | None, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return f"{x:,.{nd}f}"


def ratios(runs: list[RunStats], baseline: dict[int, dict[str, float]]) -> list[dict[str, Any]]:
    goals = {"json": 1.3, "arrow": 1.1}
    out = []
    for r in runs:
        if r.mode != "open":
            continue
        b = baseline[r.size]
        out.append(
            {
                "size": r.size,
                "format": r.fmt,
                "e2e_p50_ms": r.p50_ms,
                "score_rows_ms": b["score_rows_ms"],
                "ratio": r.p50_ms / b["score_rows_ms"],
                "server_path_ms": b[f"server_path_{r.fmt}_ms"],
                "ratio_vs_server_path": r.p50_ms / b[f"server_path_{r.fmt}_ms"],
                "goal": goals[r.fmt] if r.size == SOAK_SIZE else None,
            }
        )
    return out


def markdown(
    report: dict[str, Any],
    runs: list[RunStats],
    baseline: dict[int, dict[str, float]],
    soak: dict[str, Any],
    args: argparse.Namespace,
) -> str:
    lines = [
        f"Machine load at start: `{report['uptime_start']}`; at end: `{report.get('uptime_end', '-')}`",
        "",
        f"Server: `recsys-mtl serve`, torch_threads {args.threads}, one fp32 HoME variant with survival "
        f"curves; client: {args.client} on uvloop, open loop at {args.load:.0%} of the saturation probe "
        f"({args.probe_clients} closed-loop clients, {args.probe_seconds:g} s), {args.duration:g} s per "
        "scenario, latency from the intended send time.",
        "",
        "| N | format | saturation req/s | rate req/s | p50 ms | p95 ms | p99 ms | achieved req/s "
        "| candidates/s | errors | in-process score ms | p50 / in-process | server mean ms | srv CPU % "
        "| client CPU % |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    probes = {(r.size, r.fmt): r for r in runs if r.mode == "closed"}
    for r in runs:
        if r.mode != "open":
            continue
        b = baseline[r.size]
        p = probes[(r.size, r.fmt)]
        lines.append(
            f"| {r.size} | {r.fmt} | {_fmt(p.rps)} | {_fmt(r.offered_rps)} | {_fmt(r.p50_ms)} | "
            f"{_fmt(r.p95_ms)} | {_fmt(r.p99_ms)} | {_fmt(r.rps)} | {_fmt(r.cands_per_s, 0)} | {r.errors} | "
            f"{_fmt(b['score_rows_ms'])} | {_fmt(r.p50_ms / b['score_rows_ms'], 2)} | "
            f"{_fmt(r.server.get('server_latency_mean_ms'))} | {_fmt(r.server_cpu_pct, 0)} | "
            f"{_fmt(r.client_cpu_pct, 0)} |"
        )
    lines += [
        "",
        "Saturation probes (closed loop):",
        "",
        "| N | format | clients | req/s | candidates/s | p50 ms | p99 ms | requests / forward "
        "| forward mean ms | srv CPU % | client CPU % |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        if r.mode == "closed":
            lines.append(
                f"| {r.size} | {r.fmt} | {r.concurrency} | {_fmt(r.rps)} | {_fmt(r.cands_per_s, 0)} | "
                f"{_fmt(r.p50_ms)} | {_fmt(r.p99_ms)} | {_fmt(r.server.get('requests_per_forward'), 2)} | "
                f"{_fmt(r.server.get('server_forward_mean_ms'))} | {_fmt(r.server_cpu_pct, 0)} | "
                f"{_fmt(r.client_cpu_pct, 0)} |"
            )
    lines += [
        "",
        "In-process, same rows, medians (ms): the baseline `score(rows)` and the server's stages one by one:",
        "",
        "| N | score(rows) | before / after the load runs | decode JSON | decode Arrow | check "
        "| transform (shared user) | forward | survival post | render JSON / Arrow | request KB JSON / Arrow "
        "| response KB JSON / Arrow |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, b in sorted(baseline.items()):
        lines.append(
            f"| {n} | {b['score_rows_ms']:.2f} | {b['score_rows_before_ms']:.2f} / "
            f"{b['score_rows_after_ms']:.2f} | {b['decode_json_ms']:.2f} | {b['decode_arrow_ms']:.2f} | "
            f"{b['check_ms']:.2f} | {b['transform_shared_ms']:.2f} | {b['forward_ms']:.2f} | "
            f"{b['postprocess_ms']:.2f} | {b['render_json_ms']:.2f} / {b['render_arrow_ms']:.2f} | "
            f"{b['json_request_kb']:.0f} / {b['arrow_request_kb']:.0f} | {b['json_response_kb']:.0f} / "
            f"{b['arrow_response_kb']:.0f} |"
        )
    attr = baseline.get(SOAK_SIZE, {}).get("attribution")
    if attr:
        base = attr["baseline_p50_ms"]
        lines += [
            "",
            f"Where the time goes at N={SOAK_SIZE}: one open-loop run at {attr['rate_rps']:.1f} req/s for "
            f"{args.attribution_seconds:g} s, requests round-robin over {attr['variants']} variants (same "
            "background load for all):",
            "",
            "| variant | p50 ms | p95 ms | p99 ms | p50 - baseline p50 ms | p50 / baseline p50 | samples "
            "| errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in runs:
            if r.mode == "attr":
                lines.append(
                    f"| {r.fmt} | {_fmt(r.p50_ms, 2)} | {_fmt(r.p95_ms, 2)} | {_fmt(r.p99_ms, 2)} | "
                    f"{_fmt(r.p50_ms - base, 2)} | {_fmt(r.p50_ms / base, 2)} | {r.ok} | {r.errors} |"
                )
    if soak:
        st: RunStats = next(r for r in runs if r.mode == "soak")
        lines += [
            "",
            f"Soak: N={SOAK_SIZE}, JSON, {soak['rate_rps']:.1f} req/s ({args.soak_rate:.0%} of "
            f"{soak['saturation_rps']:.1f}) for {args.soak_seconds:g} s:",
            "",
            "| p50 ms | p99 ms | p99 / p50 (goal <= 3) | errors (goal 0) | RSS start MB | RSS end MB "
            "| RSS growth (goal < 5%) | achieved req/s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {_fmt(st.p50_ms)} | {_fmt(st.p99_ms)} | {_fmt(soak['p99_over_p50'], 2)} | {st.errors} | "
            f"{soak['rss_start_mb']:.0f} | {soak['rss_end_mb']:.0f} | {soak['rss_growth_pct']:+.2f}% | "
            f"{_fmt(st.rps)} |",
        ]
    lines += ["", "Goals (issue #5):", ""]
    for r in report["ratios"]:
        if r["goal"] is not None:
            verdict = "met" if r["ratio"] <= r["goal"] else "MISSED"
            b = baseline[r["size"]]
            lo, hi = sorted((b["score_rows_before_ms"], b["score_rows_after_ms"]))
            shaky = (
                f" (baseline UNSTABLE: {b['score_rows_before_ms']:.1f} ms before / "
                f"{b['score_rows_after_ms']:.1f} ms after the load runs: the background load changed)"
                if hi > 1.25 * lo
                else ""
            )
            lines.append(
                f"- N={r['size']} {r['format']}: end-to-end p50 / in-process score = {r['e2e_p50_ms']:.1f} / "
                f"{r['score_rows_ms']:.1f} ms = **{r['ratio']:.2f}** (goal <= {r['goal']}): "
                f"{verdict}{shaky}; "
                f"vs the server's own compute path in-process ({r['server_path_ms']:.1f} ms): "
                f"{r['ratio_vs_server_path']:.2f}"
            )
    attr_runs = {r.fmt: r for r in runs if r.mode == "attr"}
    base_run = attr_runs.get(BASELINE_LABEL)
    if base_run is not None:
        for fmt, goal in (("json", 1.3), ("arrow", 1.1)):
            for label, r in attr_runs.items():
                if label.startswith(f"{fmt} over HTTP"):
                    ratio = r.p50_ms / base_run.p50_ms
                    lines.append(
                        f"- interleaved in one run (N={SOAK_SIZE}): {label} p50 / baseline p50 = "
                        f"{r.p50_ms:.1f} / {base_run.p50_ms:.1f} ms = **{ratio:.2f}** (goal <= {goal}): "
                        f"{'met' if ratio <= goal else 'MISSED'}"
                    )
    if soak:
        st = next(r for r in runs if r.mode == "soak")
        checks = [
            ("p99/p50", f"{soak['p99_over_p50']:.2f}", "<= 3", soak["p99_over_p50"] <= 3),
            ("errors", str(st.errors), "0", st.errors == 0),
            ("RSS growth", f"{soak['rss_growth_pct']:+.2f}%", "< 5%", soak["rss_growth_pct"] < 5),
        ]
        for name, got, goal, ok in checks:
            lines.append(f"- soak {name}: {got} (goal {goal}): {'met' if ok else 'MISSED'}")
    return "\n".join(lines) + "\n"
