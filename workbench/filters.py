"""Stage 04: the final filter. Marks rows, never drops them.

`filter_rows(cfg, rows, seeds)`:
    in:  rows with id, text and the keep_<stage>/reject_reason_<stage> columns of earlier stages;
         seeds with id, text (real examples the generator saw)
    out: the same rows plus
         keep_filter, reject_reason_filter (None, 'too_short', 'too_long', 'wrong_language',
         'profanity', 'forbidden', 'format', 'pii', 'entity_missing', 'copy_of_seed', 'duplicate',
         'near_duplicate'),
         pii_found (kinds redacted or rejected), dup_of (id of the kept row or seed it repeats),
         dup_similarity, and the verdict over all stages: keep, reject_stage, reject_reason

The gates are stage 01's (`workbench.gates`): constraints, then exact and near-duplicates (MinHash
LSH over character shingles, every candidate verified by its Jaccard similarity) within the rows
and against the seeds. The first row of a group is kept; later ones record `dup_of`. Running the
filter again on its kept rows marks nothing (idempotent).
"""

from __future__ import annotations

import pandas as pd

from workbench import gates
from workbench.config import RunConfig


def filter_rows(cfg: RunConfig, rows: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    out = rows.copy().reset_index(drop=True)
    upstream = [c for c in out.columns if c.startswith("keep_") and c != "keep_filter"]
    alive = out[upstream].all(axis=1) if upstream else pd.Series(True, index=out.index)
    out["keep_filter"] = True
    out["reject_reason_filter"] = None
    gates.constraints(cfg, out, out.index[alive], gate="filter")
    gates.dedup(out, out.index[alive & out["keep_filter"]], gates.dedup_index(cfg, seeds), gate="filter")
    return verdict(out)


def verdict(rows: pd.DataFrame) -> pd.DataFrame:
    """`keep` = every keep_<stage> holds; `reject_stage`/`reject_reason` = the first stage that said no."""
    out = rows.copy()
    stages = [c[len("keep_") :] for c in out.columns if c.startswith("keep_")]
    out["keep"] = out[[f"keep_{s}" for s in stages]].all(axis=1)
    out["reject_stage"] = None
    out["reject_reason"] = None
    for s in reversed(stages):  # the earliest stage's reason wins
        bad = ~out[f"keep_{s}"]
        out.loc[bad, "reject_stage"] = s
        out.loc[bad, "reject_reason"] = out.loc[bad, f"reject_reason_{s}"]
    return out
