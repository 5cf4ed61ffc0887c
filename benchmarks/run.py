"""The benchmark suite: `make bench` runs this and writes benchmarks/results/latest.json and
benchmarks/results/latest.md (the tables the README quotes).

    .venv/bin/python benchmarks/run.py [--only endpoint cache embedded] [--peer-python PATH]

Sections (each also runs alone as its own script):
    endpoint   benchmarks/endpoint.py     the workbench and its peers against the simulated endpoint
    cache      benchmarks/cache_rerun.py  a re-run of 2,000 rows answered from the cache
    embedded   benchmarks/embedded.py     the embedded model's engine vs the loop before it, demo requests
    filters    benchmarks/filters.py      near-dedup + PII + toxicity on 1k / 10k / 100k rows
    clusters   benchmarks/clusters.py     UMAP + HDBSCAN on 10,000 real messages
    demo       (reads runs/banking77/)    the newest finished demo run's wall time by stage
A partial run (`--only`) keeps the other sections of an earlier latest.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

SECTIONS = ["endpoint", "cache", "embedded", "filters", "clusters", "demo"]
TARGETS = {  # (section, path, comparison, value, what)
    "c64": ("endpoint", ("scenarios", "c64", "workbench", "ratio_to_limit"), ">=", 0.95, "ratio to C/L at C = 64"),
    "c256": ("endpoint", ("scenarios", "c256", "workbench", "ratio_to_limit"), ">=", 0.90, "ratio to C/L at C = 256"),
    "c64_faults": (
        "endpoint",
        ("scenarios", "c64_faults", "workbench", "ratio_to_limit"),
        ">=",
        0.80,
        "ratio to C/L at C = 64 with 10% injected faults",
    ),
    "c64_faults_lost": (
        "endpoint",
        ("scenarios", "c64_faults", "workbench", "rows_lost"),
        "==",
        0,
        "rows lost with injected faults",
    ),
    "cache": ("cache", ("rerun_s",), "<", 1.0, "re-run of 2,000 cached rows, seconds"),
    "embedded": ("embedded", ("speedup",), ">=", 5.0, "embedded model: the engine's tokens/s over today's loop's"),
    "filters": ("filters", ("largest", "seconds"), "<", 60.0, "near-dedup + PII + toxicity on 100,000 rows, seconds"),
    "clusters": ("clusters", ("seconds",), "<", 60.0, "UMAP + HDBSCAN on 10,000 points, seconds"),
}


def demo_times(task: str = "banking77") -> dict | None:
    """Wall time by stage of the newest finished run of the demo config, and how many of its LLM
    calls came from the cache (a warm cache makes 01-03 nearly free)."""
    runs = sorted((ROOT / "runs" / task).glob("[0-9]*-*/provenance.json"))
    for prov_path in reversed(runs):
        prov = json.loads(prov_path.read_text())
        if prov.get("status") != "finished":
            continue
        metrics_path = prov_path.parent / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        stages = {s: info.get("seconds") for s, info in prov.get("stages", {}).items()}
        m01 = metrics.get("01_prompts", {})
        return {
            "run": f"runs/{task}/{prov_path.parent.name}",
            "started": prov.get("started"),
            "seconds_by_stage": stages,
            "seconds": round(sum(v or 0 for v in stages.values()), 1),
            "llm_calls_01": m01.get("llm_calls"),
            "llm_cached_01": m01.get("llm_cached"),
            "cached_02": metrics.get("02_responses", {}).get("cached"),
        }
    return None


def machine() -> dict:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
        platform.processor(),
    )
    mem = next((int(ln.split()[1]) // 1024**2 for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), None)
    try:
        import torch

        torch_v = torch.__version__
    except ImportError:
        torch_v = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "gpu": None,
        "python": platform.python_version(),
        "torch": torch_v,
        "date": datetime.date.today().isoformat(),
    }


def _get(d: dict, path: tuple) -> object:
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def targets(res: dict) -> list[dict]:
    out = []
    for name, (section, path, op, value, what) in TARGETS.items():
        got = _get(res.get(section) or {}, path)
        ok = None
        if isinstance(got, (int, float)):
            ok = {">=": got >= value, "<": got < value, "==": got == value}[op]
        out.append({"target": name, "what": what, "want": f"{op} {value}", "measured": got, "met": ok})
    ep = (res.get("endpoint") or {}).get("scenarios") or {}
    ahead = []
    for scen, clients in ep.items():
        wb = (clients.get("workbench") or {}).get("ratio_to_limit")
        peers = {c: e.get("ratio_to_limit") or 0 for c, e in clients.items() if c != "workbench"}
        if wb is not None and peers:
            best = max(peers, key=peers.get)
            ahead.append({"scenario": scen, "workbench": wb, "best_peer": best, "best_peer_ratio": peers[best]})
    if ahead:
        out.append(
            {
                "target": "ahead_of_peers",
                "what": "the workbench ahead of every peer in every scenario",
                "want": "> every peer",
                "measured": ahead,
                "met": all(a["workbench"] > a["best_peer_ratio"] for a in ahead),
            }
        )
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, no GPU; "
        f"Python {m['python']}, torch {m['torch']}. Written by `make bench` (benchmarks/run.py).",
        "",
    ]
    ep = res.get("endpoint")
    if ep:
        s = ep["settings"]
        lines += [
            "## Endpoint throughput (ratio to the server's limit C/L; rows lost)",
            "",
            f"{s['rows']:,} rows per run, latency L = {s['latency_s'] * 1000:.0f} ms, one run per client and "
            f"scenario ({s['repeats']} repeat(s)), each client in its own process against a fresh server.",
            "",
            "| client | version | c64 | c256 | c64_faults (rows lost) | peak memory (c64) | CPU per row (c64) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        sc = ep["scenarios"]
        for c in sc.get("c64", {}):
            cell = {k: sc.get(k, {}).get(c, {}) for k in ("c64", "c256", "c64_faults")}
            f = cell["c64_faults"]
            lines.append(
                f"| {c} | {cell['c64'].get('version')} | {cell['c64'].get('ratio_to_limit')} "
                f"| {cell['c256'].get('ratio_to_limit')} | {f.get('ratio_to_limit')} ({f.get('rows_lost')} lost) "
                f"| {cell['c64'].get('peak_rss_mb')} MB | {cell['c64'].get('cpu_ms_per_row')} ms |"
            )
        ideal = " · ".join(f"{k} {v.get('ideal_ratio')}" for k, v in s["scenarios"].items())
        lines += ["", f"An ideal client (no CPU of its own, retries the moment they are allowed) would reach: {ideal}."]
        if s.get("peers_missing"):
            lines += ["", f"Peers not installed, not run: {', '.join(s['peers_missing'])}."]
        rep = ep.get("replicas_c64x2")
        if rep:
            per = (rep.get("server") or {}).get("answered_per_replica")
            lines += [
                "",
                f"Scale-out: two C = 64 replicas behind one config (`llm.replicas`), the workbench alone: "
                f"ratio {rep['ratio_to_limit']} of 2 C / L = {rep['limit_rps']:.0f} requests/s (ideal "
                f"{rep['ideal_ratio']}); rows answered per replica {per}, {rep['rows_lost']} lost.",
            ]
        lines.append("")
    if res.get("cache"):
        c = res["cache"]
        lines += [
            "## Cache",
            "",
            f"A re-run of {c['rows']:,} rows answered from the cache and written to JSONL: **{c['rerun_s']} s** "
            f"({c['rerun_us_per_row']} µs per row; {c['rows_from_cache']:,} rows from the cache, "
            f"the server answered {c['server_answers']:,} in the first run only).",
            "",
        ]
    if res.get("embedded"):
        e = res["embedded"]
        o = e["one_at_a_time"]
        lines += [
            f"## Embedded generation ({e['model']}, {e['requests']}, CPU {e['cpu']})",
            "",
            "| loop | dtype | batch | rows | prompt tokens | tokens | seconds | tokens/s | stopped at end of message |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for g in e["settings"] + [o]:
            lines.append(
                f"| {g['loop']} | {g['dtype']} | {g['batch_size']} | {g['rows']} | {g['prompt_tokens']} | {g['tokens']} "
                f"| {g['seconds']} | {g['tokens_per_s']} | {g['stopped_at_end_of_message']} |"
            )
        lines += [
            "",
            f"The engine over {e['baseline']} (the loop before it, at the precision `auto` picks here): "
            f"**{e['speedup']}×** at the same precision, **{e['speedup_int8']}×** with int8 steps; int8 batched "
            f"over one row at a time: {e['batched_over_single']}×.",
            "",
        ]
    if res.get("filters"):
        f = res["filters"]
        lines += [
            "## Filters: near-dedup + PII + toxicity (cost growth)",
            "",
            "| rows | seconds | constraints + PII | toxicity | near-dedup | rows/s | peak memory | memory with the rows built |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in f["runs"]:
            g = r["seconds_by_gate"]
            lines.append(
                f"| {r['rows']:,} | {r['seconds']} | {g['constraints_pii']} | {g['toxicity']} | {g['near_dedup']} "
                f"| {r['rows_per_s']:,} | {r['peak_rss_mb']} MB | {r['rss_after_building_rows_mb']} MB |"
            )
        big = f["largest"]
        lines += [
            "",
            f"Slope of log(time) on log(rows): **{f['time_slope']}** (1.0 is linear). At {big['rows']:,} rows: "
            f"{big['kept']:,} kept, rejected {big['rejected']}, {big['pii_redacted']:,} redacted. Language detection "
            f"(not in the three, stage 04 runs it too) costs {big['language_detection_us_per_row']} µs per row.",
            "",
        ]
    if res.get("clusters"):
        c = res["clusters"]
        lines += [
            "## Clusters: UMAP + HDBSCAN",
            "",
            f"{c['points']:,} real messages: **{c['seconds']} s** (exact neighbours {c['knn_s']} s, UMAP {c['umap_s']} s, "
            f"HDBSCAN {c['hdbscan_s']} s) → {c['clusters']} clusters, {c['noise_points']:,} noise points "
            f"(min_cluster_size {c['min_cluster_size']}, {c['selection']}). Embedding them: {c['embed_s']} s "
            "(from the cache after the first run).",
            "",
        ]
    if res.get("demo"):
        d = res["demo"]
        cells = " | ".join(f"{v}" for v in d["seconds_by_stage"].values())
        lines += [
            "## The demo iteration by stage (seconds)",
            "",
            f"From `{d['run']}` (started {d['started']}; stage 01 answered {d['llm_cached_01']} of {d['llm_calls_01']} "
            "LLM calls from the cache).",
            "",
            "| " + " | ".join(d["seconds_by_stage"]) + " | total |",
            "| " + " | ".join("---" for _ in d["seconds_by_stage"]) + " | --- |",
            f"| {cells} | {d['seconds']} |",
            "",
        ]
    lines += ["## Targets", "", "| target | want | measured | met |", "| --- | --- | --- | --- |"]
    for t in res["targets"]:
        got = t["measured"]
        if t["target"] == "ahead_of_peers":
            got = "; ".join(
                f"{a['scenario']}: {a['workbench']} vs {a['best_peer']} {a['best_peer_ratio']}" for a in got
            )
        met = {True: "yes", False: "**no**", None: "not run"}[t["met"]]
        lines.append(f"| {t['what']} | {t['want']} | {got} | {met} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", choices=SECTIONS, help="sections to run (default: all)")
    ap.add_argument("--peer-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--print-extra", action="store_true", help="print the `bench` extra's requirements and exit")
    a = ap.parse_args()
    if a.print_extra:
        import tomllib

        with open(ROOT / "pyproject.toml", "rb") as f:
            print(" ".join(tomllib.load(f)["project"]["optional-dependencies"]["bench"]))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "latest.json"
    res = json.loads(path.read_text()) if a.only and path.exists() else {}
    res["machine"] = machine()
    wall = res.setdefault("wall_s", {})
    for section in a.only or SECTIONS:
        print(f"== {section}", flush=True)
        t0 = time.perf_counter()
        if section == "endpoint":
            import endpoint

            res["endpoint"] = endpoint.run(a.rows, 1, a.peer_python)
        elif section == "cache":
            import cache_rerun

            res["cache"] = cache_rerun.run(a.rows)
        elif section == "embedded":
            import embedded

            res["embedded"] = embedded.run()
        elif section == "filters":
            import filters

            g = filters.growth([1_000, 10_000, 100_000])
            res["filters"] = g | {"largest": g["runs"][-1]}
        elif section == "clusters":
            import subprocess

            # a fresh process: the time includes loading UMAP's numba-compiled functions
            r = subprocess.run(
                [sys.executable, str(ROOT / "benchmarks" / "clusters.py")], capture_output=True, text=True, cwd=ROOT
            )
            if r.returncode != 0:
                raise RuntimeError(f"benchmarks/clusters.py failed:\n{r.stderr[-2000:]}")
            res["clusters"] = json.loads(r.stdout)
        elif section == "demo":
            res["demo"] = demo_times()
        wall[section] = round(time.perf_counter() - t0, 1)
    res["targets"] = targets(res)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.rename(path)
    md = markdown(res)
    (RESULTS / "latest.md").write_text(md)
    print(md)
    missed = [t["target"] for t in res["targets"] if t["met"] is False]
    print(f"written {path.relative_to(ROOT)} and latest.md; targets missed: {', '.join(missed) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
