"""Stage 01's quality gates. Each marks rows with `keep_<gate>` and `reject_reason_<gate>`, never drops.

    constraints    too_short, too_long, wrong_language, profanity, pii, forbidden, format, entity_missing
    dedup          duplicate / near_duplicate (within this stage), copy_of_seed, seen_before (an earlier
                   iteration's prompt); `dup_of` names the row, seed or earlier prompt repeated
    contamination  contamination: a near-duplicate of a real dev row (07's failure analysis reads them),
                   found through a `ShingleIndex` of hashes only, never the rows' text. The test split is
                   not read before 06_evaluate, which checks the kept rows against all of it
    domain         off_domain: `domain_score` (mean of the 3 best cosine similarities to the seeds and
                   label definitions, MiniLM) below `prompts.min_domain_score`
    balance        over_represented: surplus of a grid cell, or a label / difficulty whose kept share
                   exceeds its target beyond `prompts.balance_tolerance`; `balance_detail` says which

Near-duplicates: MinHash over hashed character shingles with LSH banding for candidates; every
candidate is verified by its exact Jaccard similarity.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import zlib

import numpy as np
import pandas as pd

from workbench import data, quality
from workbench.config import RunConfig
from workbench.data import label_topic

_PRIME = (1 << 61) - 1
_NUM_PERM, _BANDS = 64, 16  # 16 bands of 4 rows: candidate pairs from Jaccard ≈ 0.5 up
_rng = np.random.default_rng(0)
_A = _rng.integers(1, _PRIME, _NUM_PERM, dtype=np.uint64)
_B = _rng.integers(0, _PRIME, _NUM_PERM, dtype=np.uint64)


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", str(text).lower())).strip()


def text_hash(text: str) -> str:
    return hashlib.sha1(normalize(text).encode()).hexdigest()


def shingles(text: str, k: int) -> frozenset[int]:
    """Hashed character k-shingles of the normalized text."""
    t = normalize(text)
    return frozenset(zlib.crc32(t[i : i + k].encode()) for i in range(max(1, len(t) - k + 1))) if t else frozenset()


def jaccard(a: frozenset, b: frozenset) -> float:
    if not (a or b):
        return 1.0
    inter = len(a & b)  # the union's size follows from it: no second set is built
    return inter / (len(a) + len(b) - inter)


def minhash(sh: frozenset[int]) -> np.ndarray:
    if not sh:
        return np.full(_NUM_PERM, np.iinfo(np.uint64).max, dtype=np.uint64)
    h = np.fromiter(sh, dtype=np.uint64)
    # uint64 wrap-around in a*h+b is a fine universal-hash family here: only equality of minima matters
    return ((np.outer(_A, h) + _B[:, None]) % np.uint64(_PRIME)).min(axis=1)


class ShingleIndex:
    """Near-duplicate lookup: exact hashes of normalized text plus MinHash-LSH over hashed shingles.
    It keeps keys and hashes only, so an index of held-out rows never holds their text."""

    def __init__(self, threshold: float, k: int):
        self.threshold, self.k = threshold, k
        self.exact: dict[str, str] = {}
        self.sets: dict[str, frozenset[int]] = {}
        self.buckets: list[dict[bytes, list[str]]] = [{} for _ in range(_BANDS)]
        # query's work, for an add of the same text: (hash(text), len), its hash, shingles, bands;
        # the text itself is not kept (an index of held-out rows must not hold their text)
        self._last: list = [None, None, None, None]

    def _hash(self, text: str) -> str:
        if self._last[0] != (hash(text), len(text)):
            self._last = [(hash(text), len(text)), text_hash(text), None, None]
        return self._last[1]

    def _sketch(self, text: str) -> tuple[frozenset[int], list[bytes]]:
        """Shingles and LSH bands of `text`: a query followed by an add of the same text (what
        `dedup` does for every row it keeps) computes them once."""
        self._hash(text)
        if self._last[2] is None:
            sh = shingles(text, self.k)
            self._last[2:] = [sh, self._bands(sh)]
        return self._last[2], self._last[3]

    def __len__(self) -> int:
        return len(self.sets)

    @staticmethod
    def _bands(sh: frozenset[int]) -> list[bytes]:
        sig, r = minhash(sh), _NUM_PERM // _BANDS
        return [sig[b * r : (b + 1) * r].tobytes() for b in range(_BANDS)]

    def add(self, key: str, text: str) -> None:
        self.exact.setdefault(self._hash(text), key)
        sh, bands = self._sketch(text)
        self.sets[key] = sh
        for b, band in enumerate(bands):
            self.buckets[b].setdefault(band, []).append(key)

    def query(self, text: str) -> tuple[str | None, float]:
        """(key of the closest indexed text at or above the threshold, its similarity); exact
        repeats (after normalization) have similarity 1. (None, 0.0) when there is none."""
        hit = self.exact.get(self._hash(text))
        if hit is not None:
            return hit, 1.0
        sh, bands = self._sketch(text)
        cands = {key for b, band in enumerate(bands) for key in self.buckets[b].get(band, ())}
        best, best_sim = None, 0.0
        for key in sorted(cands):
            sim = jaccard(sh, self.sets[key])
            if sim >= self.threshold and sim > best_sim:
                best, best_sim = key, sim
        return best, best_sim


def dedup_index(cfg: RunConfig, seeds: pd.DataFrame, earlier: pd.DataFrame | None = None) -> ShingleIndex:
    """The duplicate index to start from: the seeds (`seed:<id>`) and earlier iterations' prompts
    (`earlier:<id>`); rows that pass `dedup` join it as they go."""
    index = ShingleIndex(cfg.filter.near_dup_threshold, cfg.filter.shingle_size)
    for prefix, frame in (("seed", seeds), ("earlier", earlier)):
        for i, t in zip(frame["id"], frame["text"]) if frame is not None else ():
            index.add(f"{prefix}:{i}", t)
    return index


def eval_index(cfg: RunConfig) -> ShingleIndex:
    """The contamination index: the real dev rows, keyed `dev:<id>`, as hashes only; nothing of their
    text reaches the generator. The test split is never read here (or anywhere before 06_evaluate,
    which checks the kept rows against the whole of it): it must not steer generation."""
    index = ShingleIndex(cfg.filter.near_dup_threshold, cfg.filter.shingle_size)
    split = data.dev_split(cfg)
    for i, t in zip(split["id"], split["text"]):
        index.add(f"dev:{i}", t)
    return index


# ---------------------------------------------------------------- the gates


def _start(rows: pd.DataFrame, gate: str) -> None:
    if f"keep_{gate}" not in rows:
        rows[f"keep_{gate}"] = True
        rows[f"reject_reason_{gate}"] = None


def alive(rows: pd.DataFrame) -> pd.Series:
    """Rows no gate has rejected yet."""
    cols = [c for c in rows.columns if c.startswith("keep_") and c != "keep_prompts"]
    return rows[cols].all(axis=1) if cols else pd.Series(True, index=rows.index)


def _reject(rows: pd.DataFrame, i, gate: str, reason: str) -> None:
    rows.at[i, f"keep_{gate}"] = False
    rows.at[i, f"reject_reason_{gate}"] = reason


_META = re.compile(
    r"\b(as an ai|language model|here is (a|an|the|my|one)|here's (a|an|the)|new message|customer message|"
    r"message about|this topic)\b|\[[^\]]{1,30}\]|\{[a-z _']+\}|<[a-z _']+>",
    re.I,
)


def column(rows: pd.DataFrame, todo, name: str) -> list:
    """`rows[name]` at the `todo` rows as a list, read at once (a cell read costs 15 µs); None for
    every row when there is no such column."""
    if not len(todo):
        return []
    return rows.loc[todo, name].tolist() if name in rows.columns else [None] * len(todo)


def row_texts(rows: pd.DataFrame, todo) -> list[str]:
    """The `todo` rows' texts, a missing one (NaN, None) as empty."""
    return [t if isinstance(t, str) else "" for t in column(rows, todo, "text")]


def constraints(cfg: RunConfig, rows: pd.DataFrame, todo, gate: str = "constraints", num_proc: int = 1) -> None:
    """Length, language, profanity, forbidden patterns, format (no meta-talk about the task, no
    [placeholders]), PII (redacted in place unless quality.pii is reject; kinds in `pii_found`) and
    the cell's required entity, in that order; the first that fails is the row's reason.
    `num_proc` > 1 checks the rows in that many processes (`map_rows`)."""
    _start(rows, gate)
    if "pii_found" not in rows:
        rows["pii_found"] = None
    # columns are read once and written back once: a cell read costs 15 µs, and a cell write into
    # a pandas string column copies the column (O(rows) each; 270 µs at 100,000 rows)
    texts = row_texts(rows, todo)
    entities = [e if isinstance(e, str) else None for e in column(rows, todo, "entity")]
    res = map_rows(check_constraints, {"text": texts, "entity": entities}, num_proc, cfg=cfg)
    redacted_texts: dict = {}
    for i, reason, redacted, kinds in zip(todo, res["reason"], res["redacted"], res["pii"]):
        if kinds:
            rows.at[i, "pii_found"] = kinds
        if redacted is not None:
            redacted_texts[i] = redacted
        if reason:
            _reject(rows, i, gate, reason)
    if redacted_texts:
        rows.loc[list(redacted_texts), "text"] = list(redacted_texts.values())


def check_constraints(text: list[str], entity: list[str | None], cfg: RunConfig) -> dict[str, list]:
    """The row-by-row part of `constraints`, on plain lists (so it can run in other processes):
    per row the reason (or None), the redacted text (None when nothing was redacted) and the PII
    kinds found (comma-separated, or None)."""
    q = cfg.quality
    forbidden = [re.compile(p, re.I) for p in q.forbidden]
    out: dict[str, list] = {"reason": [], "redacted": [], "pii": []}
    for t, ent in zip(text, entity):
        reason = redacted_text = kinds_found = None
        if len(t) < q.min_chars:
            reason = "too_short"
        elif len(t) > q.max_chars:
            reason = "too_long"
        elif q.language and quality.wrong_language(t, q.language):
            reason = "wrong_language"
        elif q.profanity == "reject" and quality.profanity(t):
            reason = "profanity"
        elif any(p.search(t) for p in forbidden):
            reason = "forbidden"
        elif _META.search(quality.REDACTED.sub("", t)):  # a redacted [PHONE] is not a placeholder
            reason = "format"
        if reason is None and q.pii != "allow":
            redacted, kinds = quality.redact(t)
            if kinds:
                kinds_found = ",".join(kinds)
                if q.pii == "reject":
                    reason = "pii"
                else:
                    redacted_text = redacted
        if reason is None and ent is not None and not quality.mentions(t, ent):
            reason = "entity_missing"
        out["reason"].append(reason)
        out["redacted"].append(redacted_text)
        out["pii"].append(kinds_found)
    return out


def map_rows(fn, columns: dict[str, list], num_proc: int = 1, **kwargs) -> dict[str, list]:
    """`fn(**columns, **kwargs)` → dict of equally long lists of strings or None; with `num_proc`
    > 1 (and enough rows to be worth the processes' start) through
    `datasets.Dataset.map(batched=True, num_proc=…)`, in batches of 1,000 rows, results in order."""
    n = len(next(iter(columns.values()), []))
    if num_proc <= 1 or n < 2_000:
        return fn(**columns, **kwargs)
    import datasets  # datasets (pyarrow) only where a dataset is written or mapped

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_dict(columns)
    names = list(fn(**{k: v[:1] for k, v in columns.items()}, **kwargs))  # the output columns
    out = ds.map(
        functools.partial(_call_columns, fn=fn, kwargs=kwargs),
        batched=True,
        batch_size=1_000,
        num_proc=num_proc,
        remove_columns=list(columns),
        # a batch whose values are all None would otherwise be typed null, and clash with the next
        features=datasets.Features({k: datasets.Value("string") for k in names}),
        keep_in_memory=True,
        load_from_cache_file=False,
    )
    return out.to_dict()


def _call_columns(batch: dict, fn, kwargs: dict) -> dict:
    return fn(**batch, **kwargs)


def dedup(rows: pd.DataFrame, todo, index: ShingleIndex, gate: str = "dedup") -> None:
    """Each row against the index (seeds `seed:<id>`, earlier iterations `earlier:<id>`, and this
    stage's rows that passed before it); a row that passes joins the index."""
    _start(rows, gate)
    for col, default in (("dup_of", None), ("dup_similarity", math.nan)):
        if col not in rows:
            rows[col] = default
    for i, text, row_id in zip(todo, column(rows, todo, "text"), column(rows, todo, "id")):
        key, sim = index.query(text)
        if key is None:
            index.add(f"row:{row_id}", text)
            continue
        kind, ref = key.split(":", 1)
        reason = {"seed": "copy_of_seed", "earlier": "seen_before"}.get(kind)
        if reason is None:
            reason = "duplicate" if sim == 1.0 else "near_duplicate"
        rows.at[i, "dup_of"] = ref
        rows.at[i, "dup_similarity"] = sim
        _reject(rows, i, gate, reason)


def contamination(rows: pd.DataFrame, todo: pd.Index, index: ShingleIndex) -> None:
    """Rows that near-duplicate a real evaluation row; `contaminated_split` says which split (the
    row's id is not recorded, so nothing downstream can lead back to the held-out text)."""
    _start(rows, "contamination")
    if "contaminated_split" not in rows:
        rows["contaminated_split"] = None
    for i, text in zip(todo, column(rows, todo, "text")):
        key, _ = index.query(text)
        if key is not None:
            rows.at[i, "contaminated_split"] = key.split(":", 1)[0]
            _reject(rows, i, "contamination", "contamination")


def domain_scores(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Mean of each row's 3 best cosine similarities to the reference rows (unit vectors)."""
    if len(vectors) == 0:
        return np.zeros(0)
    sims = vectors @ reference.T
    top = np.sort(sims, axis=1)[:, -min(3, sims.shape[1]) :]
    return top.mean(axis=1)


def domain_reference(cfg: RunConfig, seeds: pd.DataFrame, labels: list[str]) -> list[str]:
    """What on-domain text looks like: the seeds, and each label's topic and positives."""
    reference = [*seeds["text"]]
    for label in labels:
        reference += [label_topic(cfg, label), *cfg.task.label(label).positive]
    return reference


def domain(
    cfg: RunConfig,
    rows: pd.DataFrame,
    todo: pd.Index,
    scores: np.ndarray,
    gate: str = "domain",
    threshold: float | None = None,
    column: str = "domain_score",
) -> None:
    threshold = cfg.prompts.min_domain_score if threshold is None else threshold
    _start(rows, gate)
    if column not in rows:
        rows[column] = math.nan
    for i, s in zip(todo, scores):
        rows.at[i, column] = float(s)
        if s < threshold:
            _reject(rows, i, gate, "off_domain")


def balanced_counts(counts: dict, targets: dict, tol: float) -> dict:
    """The largest counts c'_k ≤ counts[k] whose shares stay within `tol`·target of each cell's
    target share. Cells with nothing kept are a shortfall that trimming cannot mend: they are left
    out and the others are balanced among themselves. With no solution, nothing is trimmed."""
    cells = [k for k in counts if counts[k] > 0 and targets.get(k, 0) > 0]
    total_t = sum(targets[k] for k in cells)
    if not cells:
        return dict(counts)
    share = {k: targets[k] / total_t for k in cells}
    for n in range(sum(counts[k] for k in cells), 0, -1):
        lo = {k: max(0, math.ceil(n * share[k] * (1 - tol) - 1e-9)) for k in cells}
        hi = {k: min(counts[k], math.floor(n * share[k] * (1 + tol) + 1e-9)) for k in cells}
        if any(lo[k] > hi[k] for k in cells) or sum(lo.values()) > n or sum(hi.values()) < n:
            continue
        out, extra = dict(lo), n - sum(lo.values())
        for k in sorted(cells, key=lambda k: -(hi[k] - lo[k])):  # fill towards the upper bounds
            add = min(extra, hi[k] - lo[k])
            out[k] += add
            extra -= add
        return {k: out.get(k, counts[k]) for k in counts}
    return dict(counts)


def balance(cfg: RunConfig, rows: pd.DataFrame) -> None:
    """Down-sample what is over-represented among the rows every other gate kept, lowest domain
    score first: (1) a grid slot filled more than once by top-up attempts, (2) a difficulty within
    a label, (3) a label, each against its target share with `prompts.balance_tolerance`."""
    _start(rows, "balance")
    rows["balance_detail"] = None
    ok = alive(rows)
    tol = cfg.prompts.balance_tolerance

    def trim(idx: list, n_drop: int, detail: str) -> None:
        order = sorted(idx, key=lambda i: (rows.at[i, "domain_score"], -rows.at[i, "round"]))
        for i in order[:n_drop]:
            _reject(rows, i, "balance", "over_represented")
            rows.at[i, "balance_detail"] = detail

    for slot, group in rows[ok].groupby("slot"):
        if len(group) > 1:
            trim(list(group.index), len(group) - 1, f"slot {slot} already filled")
    d = cfg.diversity.difficulty
    if d:
        for label, group in rows[alive(rows)].groupby("label"):
            counts = group["difficulty"].value_counts().to_dict()
            want = balanced_counts(counts, d, tol)
            for level, n in counts.items():
                if want[level] < n:
                    idx = list(group.index[group["difficulty"] == level])
                    trim(idx, n - want[level], f"{label}: {level} {n} > {want[level]} for the difficulty mix")
    target = rows.drop_duplicates("slot").groupby("label").size().to_dict()
    counts = rows[alive(rows)].groupby("label").size().to_dict()
    want = balanced_counts(counts, target, tol)
    for label, n in counts.items():
        if want[label] < n:
            kept = alive(rows)
            idx = list(rows.index[kept & (rows["label"] == label)])
            trim(idx, n - want[label], f"label {label}: {n} > {want[label]} for the label mix")
