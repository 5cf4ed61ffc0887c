"""Two run folders of one config compared: every table (artifacts/*.parquet), metrics.json and the
text artifacts, apart from timing columns, the runs' own names and temporary paths, and the order
peft writes an adapter's target modules in. It prints what is equal, what was added and each
difference: the check that a refactor left a run's behaviour as it was.

    python benchmarks/compare_runs.py runs/smoke/001-… runs/smoke/002-…
"""

import difflib
import json
import sys
from pathlib import Path

import pandas as pd

TIMING = (
    "latency_s",
    "ttft_s",
    "arrived_s",
    "seconds",
    "train_seconds",
    "started",
    "finished",
    "wall_s",
    "llm_seconds",
    "other_seconds",
    "elapsed",
    "tokens_per_s",
    "requests_per_s",
    "duration",
)


def timing(name: str) -> bool:
    n = name.lower()
    return any(t in n for t in TIMING) or n.endswith("_s") or "time" in n or "throughput" in n


def flat(d, pre=""):
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out |= flat(v, f"{pre}{k}.")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out |= flat(v, f"{pre}{i}.")
    else:
        out[pre[:-1]] = d
    return out


def compare(a: Path, b: Path) -> list[str]:
    diffs = []
    # the runs' own folders and the temporary folders they sit in are the only paths that differ
    norm_a = {str(a): "RUN", str(a.parents[3]): "TMP", a.name: "RUN"}
    norm_b = {str(b): "RUN", str(b.parents[3]): "TMP", b.name: "RUN"}
    fa = {p.relative_to(a) for p in (a / "artifacts").rglob("*.parquet")}
    fb = {p.relative_to(b) for p in (b / "artifacts").rglob("*.parquet")}
    diffs += [f"missing after: {p}" for p in sorted(fa - fb)]
    added = sorted(fb - fa)
    same = 0
    for p in sorted(fa & fb):
        x, y = pd.read_parquet(a / p), pd.read_parquet(b / p)
        gone = [c for c in x.columns if c not in y.columns]
        if gone:
            diffs.append(f"{p}: columns gone {gone}")
        cols = [c for c in x.columns if c in y.columns and not timing(c)]
        if len(x) != len(y):
            diffs.append(f"{p}: {len(x)} rows before, {len(y)} after")
            continue
        xx = x[cols].astype(str).reset_index(drop=True).replace(norm_a, regex=True)
        yy = y[cols].astype(str).reset_index(drop=True).replace(norm_b, regex=True)
        bad = [c for c in cols if not xx[c].equals(yy[c])]
        if bad:
            diffs.append(f"{p}: differs in {bad}")
        else:
            same += 1
    ma, mb = flat(json.loads((a / "metrics.json").read_text())), flat(json.loads((b / "metrics.json").read_text()))

    def alike(u, v):
        return (
            u == v
            or (u != u and v != v)
            or (
                isinstance(u, str)
                and isinstance(v, str)
                and u.replace(str(a), "RUN").replace(str(a.parents[3]), "TMP")
                == v.replace(str(b), "RUN").replace(str(b.parents[3]), "TMP")
            )
        )

    mdiff = [k for k in ma if not timing(k) and k in mb and not alike(ma[k], mb[k])]
    mgone = [k for k in ma if k not in mb and not timing(k)]
    diffs += [f"metrics {k}: {ma[k]!r} -> {mb[k]!r}" for k in mdiff]
    diffs += [f"metrics gone: {k}" for k in mgone]
    common = sorted(
        {
            str(p.relative_to(a))
            for p in (a / "artifacts").rglob("*")
            if p.is_file() and p.suffix in (".jsonl", ".md", ".yaml", ".json") and p.name not in ("curve.json",)
        }
        & {str(p.relative_to(b)) for p in (b / "artifacts").rglob("*") if p.is_file()}
    )
    for f in common:
        ta = (a / f).read_text().replace(str(a), "RUN").replace(str(a.parents[3]), "TMP")
        tb = (b / f).read_text().replace(str(b), "RUN").replace(str(b.parents[3]), "TMP")
        if f.endswith(".jsonl") and f != "artifacts/candidates.jsonl":
            if ta != tb:
                diffs.append(f"{f}: differs")
        elif f.endswith("adapter_config.json"):  # peft writes target_modules from a set: any order
            ja, jb = json.loads(ta), json.loads(tb)
            for j in (ja, jb):
                j["target_modules"] = sorted(j.get("target_modules") or [])
            if ja != jb:
                diffs.append(f"{f}: differs")
        elif not f.endswith(".jsonl") and ta != tb:
            d = [
                line
                for line in difflib.unified_diff(ta.splitlines(), tb.splitlines(), lineterm="", n=0)
                if line[:1] in "+-" and line[:3] not in ("+++", "---")
            ]
            diffs.append(f"{f}: {len(d)} lines differ: {d[:6]}")
    print(f"  text files compared: {len(common)}")
    newfiles = sorted(
        {str(p.relative_to(b)) for p in (b / "artifacts").rglob("*") if p.is_file()}
        - {str(p.relative_to(a)) for p in (a / "artifacts").rglob("*") if p.is_file()}
    )
    print(
        f"{a.name} vs {b.name}: {same} of {len(fa & fb)} tables equal apart from timing; "
        f"new tables {[str(x) for x in added]}; new files {newfiles[:12]}{' …' if len(newfiles) > 12 else ''}; "
        f"metrics keys compared {len([k for k in ma if not timing(k) and k in mb])}, new {len([k for k in mb if k not in ma])}"
    )
    return diffs


if __name__ == "__main__":
    for d in compare(Path(sys.argv[1]), Path(sys.argv[2])):
        print("  DIFF", d)
