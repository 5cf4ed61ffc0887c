"""Precision and recall of the PII, profanity and toxicity gates on the labelled regression set
(`data/gates/regression.jsonl`), and the share of the 13,083 real Banking77 messages (train and
test) each gate flags: those messages contain neither PII nor abuse, so every flag there is a
false positive.

    .venv/bin/python benchmarks/gates.py [--show-misses]

Writes benchmarks/results/gates.json and prints the table docs/gates.md quotes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from workbench import quality

ROOT = Path(__file__).resolve().parent.parent
SET = ROOT / "data" / "gates" / "regression.jsonl"


def gates(texts: list[str]) -> dict[str, list]:
    """Per gate, per text: what it found (a falsy value when nothing)."""
    probs = quality.offensive_prob(texts)
    return {
        "pii": [quality.redact(t)[1] for t in texts],
        "profanity": [quality.profanity(t) for t in texts],
        "toxicity": [quality.toxic(t, p) for t, p in zip(texts, probs)],
    }


def scores(flags: list, truth: list[bool]) -> dict:
    tp = sum(bool(f) and t for f, t in zip(flags, truth))
    fp = sum(bool(f) and not t for f, t in zip(flags, truth))
    fn = sum(not f and t for f, t in zip(flags, truth))
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": round(tp / (tp + fp), 3) if tp + fp else None,
        "recall": round(tp / (tp + fn), 3) if tp + fn else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--show-misses", action="store_true")
    args = ap.parse_args()
    rows = [json.loads(line) for line in SET.read_text().splitlines() if line.strip()]
    texts = [r["text"] for r in rows]
    got = gates(texts)
    truth = {
        "pii": [bool(r["pii"]) for r in rows],
        "profanity": [r["profane"] for r in rows],
        "toxicity": [r["toxic"] for r in rows],
    }
    out: dict = {"set": {"rows": len(rows), **{k: sum(v) for k, v in truth.items()}}, "gates": {}}
    # PII kinds: a row counts as caught only when every planted kind was found
    kinds_ok = [set(r["pii"]) <= set(g) for r, g in zip(rows, got["pii"])]
    for gate in got:
        out["gates"][gate] = scores(got[gate], truth[gate])
    out["gates"]["pii"]["right_kind"] = sum(k and t for k, t in zip(kinds_ok, truth["pii"]))
    either = [bool(a) or bool(b) for a, b in zip(got["profanity"], got["toxicity"])]
    out["gates"]["abuse (profanity or toxicity)"] = scores(
        either, [a or b for a, b in zip(truth["profanity"], truth["toxicity"])]
    )
    if args.show_misses:
        for gate in got:
            for r, g, t in zip(rows, got[gate], truth[gate]):
                if bool(g) != t:
                    print(f"{gate:10s} {'FP' if g else 'FN'} {r['text']!r} -> {g}")
    real = pd.concat([pd.read_csv(ROOT / "data/banking77" / f"{s}.csv") for s in ("train", "test")])["text"].tolist()
    t0 = time.perf_counter()
    flags = gates(real)
    seconds = time.perf_counter() - t0
    out["banking77"] = {
        "rows": len(real),
        "seconds": round(seconds, 1),
        **{
            g: {"flagged": sum(map(bool, f)), "share_pct": round(100 * sum(map(bool, f)) / len(real), 3)}
            for g, f in flags.items()
        },
        "examples": {g: [t for t, x in zip(real, f) if x][:8] for g, f in flags.items()},
    }
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "gates.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"regression set: {out['set']}")
    print("| gate | precision | recall | TP | FP | FN | Banking77 rows flagged |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for gate, s in out["gates"].items():
        b = out["banking77"].get(gate)
        share = f"{b['flagged']} ({b['share_pct']}%)" if b else "–"
        print(f"| {gate} | {s['precision']} | {s['recall']} | {s['tp']} | {s['fp']} | {s['fn']} | {share} |")
    print(f"Banking77: {len(real)} rows through the three gates in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
