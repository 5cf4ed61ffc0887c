"""Stage 04: the final filter. Marks rows, never drops them.

`filter_rows(cfg, rows, seeds)`:
    in:  rows with id, text and the keep_<stage>/reject_reason_<stage> columns of earlier stages;
         seeds with id, text (real examples the generator saw)
    out: the same rows plus
         keep_filter, reject_reason_filter (None, 'too_short', 'too_long', 'wrong_language',
         'profanity', 'pii', 'entity_missing', 'copy_of_seed', 'duplicate', 'near_duplicate'),
         pii_found (kinds redacted or rejected), dup_of (id of the kept row or seed it repeats),
         dup_similarity, and the verdict over all stages: keep, reject_stage, reject_reason

Near-duplicates: MinHash over character shingles, LSH banding for candidates, every candidate
verified by its exact Jaccard similarity. The first row of a group is kept; later ones record
`dup_of`. Running the filter again on its kept rows marks nothing (idempotent).
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import pandas as pd

from workbench import quality
from workbench.config import RunConfig

_PRIME = (1 << 61) - 1
_NUM_PERM, _BANDS = 64, 16  # 16 bands of 4 rows: candidate pairs from Jaccard ≈ 0.5 up


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", str(text).lower())).strip()


def shingles(text: str, k: int) -> set[str]:
    t = normalize(text)
    return {t[i : i + k] for i in range(max(1, len(t) - k + 1))} if t else set()


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def minhash(sh: set[str], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, _NUM_PERM, dtype=np.uint64)
    b = rng.integers(0, _PRIME, _NUM_PERM, dtype=np.uint64)
    if not sh:
        return np.full(_NUM_PERM, np.iinfo(np.uint64).max, dtype=np.uint64)
    h = np.fromiter((zlib.crc32(s.encode()) for s in sh), dtype=np.uint64)
    # (a*h + b) mod p, computed in Python ints per permutation would be slow; uint64 wrap-around is a
    # fine universal-hash family here because only equality of minima matters
    return ((np.outer(a, h) + b[:, None]) % np.uint64(_PRIME)).min(axis=1)


def near_duplicates(
    texts: list[str], threshold: float, k: int, reference: list[str] | None = None
) -> list[tuple[int | None, float, bool]]:
    """For each text: (index of the earlier kept text or reference it duplicates, similarity,
    whether the match is a reference). (None, 0.0, False) when it is the first of its group."""
    ref = reference or []
    sh = [shingles(t, k) for t in ref] + [shingles(t, k) for t in texts]
    rows_per_band = _NUM_PERM // _BANDS
    buckets: list[dict] = [{} for _ in range(_BANDS)]
    out: list[tuple[int | None, float, bool]] = []
    for i, s in enumerate(sh):
        sig = minhash(s)
        cands: set[int] = set()
        keys = [sig[b * rows_per_band : (b + 1) * rows_per_band].tobytes() for b in range(_BANDS)]
        for b, key in enumerate(keys):
            cands.update(buckets[b].get(key, ()))
        best, best_sim = None, 0.0
        for c in sorted(cands):
            sim = jaccard(s, sh[c])
            if sim >= threshold and sim > best_sim:
                best, best_sim = c, sim
        if i >= len(ref):
            if best is None:
                out.append((None, 0.0, False))
            elif best < len(ref):
                out.append((best, best_sim, True))
            else:
                out.append((best - len(ref), best_sim, False))
        if best is None:  # only group leaders (and references) enter the index
            for b, key in enumerate(keys):
                buckets[b].setdefault(key, []).append(i)
    return out


def filter_rows(cfg: RunConfig, rows: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    f = cfg.filter
    out = rows.copy().reset_index(drop=True)
    upstream = [c for c in out.columns if c.startswith("keep_") and c != "keep_filter"]
    alive = out[upstream].all(axis=1) if upstream else pd.Series(True, index=out.index)
    out["keep_filter"] = True
    out["reject_reason_filter"] = None
    out["dup_of"] = None
    out["dup_similarity"] = np.nan
    _quality_gates(cfg, out, alive)
    cand = out.index[alive & out["reject_reason_filter"].isna()].tolist()
    seen_exact: dict[str, str] = {normalize(t): sid for t, sid in zip(seeds["text"], seeds["id"])}
    seed_exact = set(seen_exact)
    dups = near_duplicates(
        [out.at[i, "text"] for i in cand], f.near_dup_threshold, f.shingle_size, reference=list(seeds["text"])
    )
    for i, (j, sim, is_ref) in zip(cand, dups):
        key = normalize(out.at[i, "text"])
        if key in seen_exact:
            out.at[i, "dup_of"] = seen_exact[key]
            out.at[i, "dup_similarity"] = 1.0
            out.at[i, "reject_reason_filter"] = "copy_of_seed" if key in seed_exact else "duplicate"
        elif j is not None:
            out.at[i, "dup_of"] = seeds["id"].iloc[j] if is_ref else out.at[cand[j], "id"]
            out.at[i, "dup_similarity"] = sim
            out.at[i, "reject_reason_filter"] = "copy_of_seed" if is_ref else "near_duplicate"
        else:
            seen_exact[key] = out.at[i, "id"]
    out["keep_filter"] = out["reject_reason_filter"].isna()
    return verdict(out)


def _quality_gates(cfg: RunConfig, out: pd.DataFrame, alive: pd.Series) -> None:
    """Length, language, profanity, PII and entity gates, in that order; the first that fails names
    the row's reason. PII is redacted in place when `quality.pii` is redact (the kinds found are kept
    in `pii_found`)."""
    q = cfg.quality
    out["pii_found"] = None
    for i in out.index[alive]:
        text = str(out.at[i, "text"] or "")
        reason = None
        if len(text) < q.min_chars:
            reason = "too_short"
        elif len(text) > q.max_chars:
            reason = "too_long"
        elif q.language and quality.wrong_language(text, q.language):
            reason = "wrong_language"
        elif q.profanity == "reject" and quality.profanity(text):
            reason = "profanity"
        if reason is None and q.pii != "allow":
            redacted, kinds = quality.redact(text)
            if kinds:
                out.at[i, "pii_found"] = ",".join(kinds)
                if q.pii == "reject":
                    reason = "pii"
                else:
                    out.at[i, "text"] = redacted
        entity = out.at[i, "entity"] if "entity" in out.columns else None
        if reason is None and isinstance(entity, str) and not quality.mentions(text, entity):
            reason = "entity_missing"
        out.at[i, "reject_reason_filter"] = reason


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
