"""The filter stage's cheap gates at scale: near-dedup + PII + toxicity over many rows.

    .venv/bin/python benchmarks/filters.py [--rows 100000] [--growth 1000 10000 100000]

The rows are built from the 10,003 real Banking77 training messages. Row i < 10,003 is message i.
After that, each row is a variant of a random message:
- 25%: an exact repeat;
- 25%: a near-duplicate, with one word dropped or two swapped;
- 50%: a new row, with an opening, a closing and an order number around it.
Of all the rows, 3% get an email, phone number or IBAN, and 1% get a threat. The gates are the
ones stage 04 runs, called the same way:
- `gates.constraints` (length, profanity, format, PII redaction; language detection is timed
  apart, on 2,000 rows, as it is not part of the three);
- `filters.toxicity`;
- `gates.dedup` against an index of the seeds, MinHash-LSH with exact Jaccard checks.

`--growth` runs each size in its own process and reports the wall time and peak memory of each,
and the slope of log(time) against log(rows) (1.0 is linear).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OPENINGS = ["Hi,", "Hello,", "Hey there,", "Good morning,", "Quick question:", "Urgent:", ""]
CLOSINGS = ["Thanks.", "Thank you!", "Please help.", "Any advice?", "Cheers", ""]
PII = [
    "my email is jo.smith{n}@example.com",
    "call me on +44 7700 9{n:05d}",
    "my IBAN is GB29 NWBK 6016 1331 {n:04d} 19",
]
THREATS = ["I will find you if this is not fixed", "I'm going to hurt whoever did this"]


def workload(n: int, seed: int = 0):
    import numpy as np
    import pandas as pd

    base = pd.read_csv(ROOT / "data" / "banking77" / "train.csv")
    texts, labels = base["text"].tolist(), base["category"].tolist()
    rng = np.random.default_rng(seed)
    out_t, out_l = [], []
    for i in range(n):
        j = i if i < len(texts) else int(rng.integers(len(texts)))
        t = texts[j]
        if i >= len(texts):
            r = rng.random()
            words = t.split()
            if r < 0.25:
                pass
            elif r < 0.5 and len(words) > 3:
                k = int(rng.integers(len(words) - 1))
                if rng.random() < 0.5:
                    del words[k]
                else:
                    words[k], words[k + 1] = words[k + 1], words[k]
                t = " ".join(words)
            else:
                t = f"{rng.choice(OPENINGS)} {t} Order {rng.integers(10**6)}. {rng.choice(CLOSINGS)}".strip()
        r = rng.random()
        if r < 0.03:
            t = f"{t} {PII[int(rng.integers(3))].format(n=int(rng.integers(10**4)))}"
        elif r < 0.04:
            t = f"{t} {THREATS[int(rng.integers(2))]}"
        out_t.append(t)
        out_l.append(labels[j])
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "label": out_l, "text": out_t})


def run(rows: int, num_proc: int = 1, language: bool = False) -> dict:
    import pandas as pd

    from workbench import data, filters, gates, quality
    from workbench.config import load_config

    cfg, _ = load_config(ROOT / "configs" / "banking77.yaml", [] if language else ["quality.language=null"])
    t0 = time.perf_counter()
    frame = workload(rows)
    build_s = time.perf_counter() - t0
    rss_data = _rss_mb()
    seeds = data.seeds(cfg)
    out = frame.copy()
    out["keep_filter"], out["reject_reason_filter"] = True, None
    times = {}

    def todo():
        return out.index[out["keep_filter"]]

    t = time.perf_counter()
    gates.constraints(cfg, out, todo(), gate="filter", num_proc=num_proc)
    times["constraints_pii"] = time.perf_counter() - t
    t = time.perf_counter()
    filters.toxicity(out, todo(), num_proc=num_proc)
    times["toxicity"] = time.perf_counter() - t
    t = time.perf_counter()
    gates.dedup(out, todo(), gates.dedup_index(cfg, seeds), gate="filter")
    times["near_dedup"] = time.perf_counter() - t
    total = sum(times.values())
    sample = frame["text"].head(2000).tolist()
    t = time.perf_counter()
    for s in sample:
        quality.wrong_language(s, "en")
    lang_us = 1e6 * (time.perf_counter() - t) / len(sample)
    reasons = out["reject_reason_filter"].value_counts().to_dict()
    return {
        "rows": rows,
        "num_proc": num_proc,
        "language_detection": language,
        "seconds": round(total, 2),
        "seconds_by_gate": {k: round(v, 2) for k, v in times.items()},
        "rows_per_s": round(rows / total),
        "build_rows_s": round(build_s, 2),
        "rejected": {str(k): int(v) for k, v in reasons.items()},
        "kept": int(out["keep_filter"].sum()),
        "pii_redacted": int(out["pii_found"].notna().sum()) if "pii_found" in out else 0,
        "language_detection_us_per_row": round(lang_us),
        "peak_rss_mb": round(_peak_mb()),
        "rss_after_building_rows_mb": round(rss_data),
        "pandas": pd.__version__,
    }


def _rss_mb() -> float:
    return next(int(ln.split()[1]) / 1024 for ln in open("/proc/self/status") if ln.startswith("VmRSS:"))


def _peak_mb() -> float:
    return next(int(ln.split()[1]) / 1024 for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))


def growth(sizes: list[int]) -> dict:
    """Each size in a fresh process (peak memory is per process); slope of log time on log rows."""
    runs = []
    for n in sizes:
        r = subprocess.run([sys.executable, __file__, "--rows", str(n)], capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        runs.append(json.loads(r.stdout))
    xs = [math.log(r["rows"]) for r in runs]
    ys = [math.log(r["seconds"]) for r in runs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return {"runs": runs, "time_slope": round(slope, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--growth", type=int, nargs="*")
    ap.add_argument("--num-proc", type=int, default=1, help="processes for the row checks (filter.num_proc)")
    ap.add_argument("--language", action="store_true", help="keep quality.language on (stage 04 runs it)")
    a = ap.parse_args()
    print(json.dumps(growth(a.growth) if a.growth else run(a.rows, a.num_proc, a.language), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
