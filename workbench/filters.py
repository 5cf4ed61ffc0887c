"""Stage 04: the final filter, one chain of gates. Marks rows, never drops them.

`filter_rows(cfg, rows, seeds, embed_fn, llm=None)`:
    in:  rows with id, label, text and the keep_<stage>/reject_reason_<stage> columns of earlier
         stages; seeds with id, label, text (real examples the generator saw); embed_fn(texts) →
         unit vectors; llm for the optional rewrite
    out: the same rows plus
         keep_filter, reject_reason_filter, the first gate that said no, in chain order:
           rewrite (optional, `filter.rewrite`): the LLM rewrites the text; an empty or failed
               rewrite is 'uncertain' (a gate that cannot decide excludes the row); every check
               below runs on the rewritten text, the original stays in `original_text`
           constraints: 'too_short', 'too_long', 'wrong_language', 'profanity', 'forbidden',
               'format', 'pii' (quality.pii: reject; with redact the redacted text is what
               trains), 'entity_missing'
           toxicity: 'toxicity' (threats, harassment, hate; `toxic_found`)
           domain: 'off_domain' (filter_domain_score against the task description, labels and seeds)
           dedup: 'copy_of_seed', 'duplicate', 'near_duplicate' across the whole dataset (the first
               row of a group is kept; later ones record `dup_of` and `dup_similarity`)
         pii_found, and the verdict over all stages: keep, reject_stage, reject_reason
Running the filter again on its kept rows marks nothing (idempotent).
"""

from __future__ import annotations

import pandas as pd

from workbench import gates, quality
from workbench.config import RunConfig
from workbench.llm import Request, clean_text

REWRITE = (
    "Rewrite this customer message {how}. Keep its meaning and its request exactly; reply with the "
    'rewritten message only.\nMessage: "{text}"'
)


def filter_rows(
    cfg: RunConfig,
    rows: pd.DataFrame,
    seeds: pd.DataFrame,
    embed_fn,
    llm=None,
    rewrite_prompt: str = REWRITE,
    off_topic_ok: str | None = None,
) -> pd.DataFrame:
    """The final filter chain over 03's rows: every gate marks, nothing is dropped.

    Columns: `rows` is 03's judged rows (id, text, label, keep_<stage>, …), `seeds` id, text, label.
    `rewrite_prompt` ({how}, {text}): how the optional rewrite is asked for (replies: tasks.reply's);
    `off_topic_ok`: a boolean column of rows the domain gate skips (a reply that refuses is generic
    by design).
    Out: `rows` with keep_filter, reject_reason_filter, pii_found, toxic_found, dup_of,
    filter_domain_score, and the verdict over every stage (see `verdict`): keep, reject_stage,
    reject_reason."""
    f = cfg.filter
    out = rows.copy().reset_index(drop=True)
    upstream = [c for c in out.columns if c.startswith("keep_") and c != "keep_filter"]
    alive = out[upstream].all(axis=1) if upstream else pd.Series(True, index=out.index)
    out["keep_filter"] = True
    out["reject_reason_filter"] = None

    def todo():
        return out.index[alive & out["keep_filter"]]

    if f.rewrite:
        rewrite(cfg, out, todo(), llm, rewrite_prompt)
    gates.constraints(cfg, out, todo(), gate="filter", num_proc=f.num_proc)
    out["toxic_found"] = None
    if f.toxicity == "reject":
        toxicity(out, todo(), num_proc=f.num_proc)
    idx = todo()
    if off_topic_ok is not None:
        idx = idx[~out.loc[idx, off_topic_ok].fillna(False).astype(bool).to_numpy()]
    reference = [cfg.task.description, *gates.domain_reference(cfg, seeds, sorted(set(seeds["label"])))]
    scores = gates.domain_scores(embed_fn(list(out.loc[idx, "text"])), embed_fn(reference)) if len(idx) else []
    threshold = f.min_domain_score if f.min_domain_score is not None else cfg.prompts.min_domain_score
    gates.domain(cfg, out, idx, scores, gate="filter", threshold=threshold, column="filter_domain_score")
    gates.dedup(out, todo(), gates.dedup_index(cfg, seeds), gate="filter")
    return verdict(out)


def toxicity(rows: pd.DataFrame, todo: pd.Index, gate: str = "filter", num_proc: int = 1) -> None:
    """Reject rows with threats, harassment or hate (`quality.toxic`); the phrases go to `toxic_found`."""
    if "toxic_found" not in rows:
        rows["toxic_found"] = None
    res = gates.map_rows(check_toxicity, {"text": gates.row_texts(rows, todo)}, num_proc)
    for i, found in zip(todo, res["toxic"]):
        if found:
            rows.at[i, "toxic_found"] = found
            gates._reject(rows, i, gate, "toxicity")


def check_toxicity(text: list[str]) -> dict[str, list]:
    """Per text, its toxic phrases joined by ", ", or None (runs in other processes with num_proc)."""
    probs = quality.offensive_prob(text)  # one batch through the model
    return {"toxic": [", ".join(found) if (found := quality.toxic(t, p)) else None for t, p in zip(text, probs)]}


def rewrite(cfg: RunConfig, rows: pd.DataFrame, todo: pd.Index, llm, prompt: str = REWRITE) -> None:
    """Rewrite each row as `filter.rewrite` asks; the original text moves to `original_text`."""
    if llm is None:
        raise ValueError("filter.rewrite is set but no LLM was given to filter_rows")
    rows["original_text"] = None
    reqs = [
        Request.chat(
            None,
            prompt.format(how=cfg.filter.rewrite, text=rows.at[i, "text"]),
            temperature=cfg.prompts.temperature,
            top_p=cfg.prompts.top_p,
            max_tokens=cfg.filter.rewrite_max_tokens,
            seed=cfg.seed,
        )
        for i in todo
    ]
    for i, cands in zip(todo, llm.generate(reqs, desc="04 rewrite")):
        c = cands[0]
        rows.at[i, "original_text"] = rows.at[i, "text"]
        text = clean_text(c["text"]) if not c["error"] else ""
        if not text:
            gates._reject(rows, i, "filter", "uncertain")
            continue
        rows.at[i, "text"] = text


def verdict(rows: pd.DataFrame) -> pd.DataFrame:
    """`keep` = every keep_<stage> holds; `reject_stage`/`reject_reason` = the first stage that said no.

    Columns: `rows` with keep_<stage> and reject_reason_<stage> columns. Out: `rows` with keep,
    reject_stage and reject_reason (the first stage that rejected the row)."""
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


def unfiltered(rows: pd.DataFrame) -> pd.DataFrame:
    """Every generated row with text (the filter ablation's 'seeds + unfiltered' set)."""
    text = rows["text"].fillna("").astype(str).str.strip()
    return rows[text.ne("") & rows.get("keep_generate", pd.Series(True, index=rows.index))]
