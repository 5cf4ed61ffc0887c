"""Stage 01: prompts from a few real seed examples, generated in rounds, critiqued and gated.

`build_prompts(cfg, seeds, llm, embed_fn, labels, train_counts, eval_index, earlier)`:
    in:  seeds with columns id, text, label
    out: one row per generation attempt (kept rows and the reject pile) with columns
         id, slot (the plan's prompt it tries to fill), round, attempt, label, persona, tone,
         difficulty, sentiment, entity, edge_case, refusal (the grid cell; None where the config asks
         for none), text (cleaned, possibly rewritten or redacted), raw (model output as returned),
         examples (seed ids shown), feedback (the previous round's defect note it was given),
         model, seed, prompt_tokens, completion_tokens, latency_s, ttft_s, finish_reason, cached,
         the critic's columns (`workbench.critique`), the gates' columns (`workbench.gates`),
         keep_<gate> and reject_reason_<gate> for each gate in GATES, and
         keep_prompts, reject_reason_prompts (the first gate that said no)
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from workbench import critique, gates, quality, tasks
from workbench.config import RunConfig, Share, allocate, plan_counts
from workbench.data import label_topic
from workbench.llm import LLM, Request, clean_text
from workbench.tasks.classification import PROMPT

GRID = ["persona", "tone", "difficulty", "sentiment", "entity", "edge_case"]


def _split(n: int, items: list[Share], fill_none: bool) -> list[str | None]:
    """`n` values from named shares (largest remainder); unset shares split what is left. With
    `fill_none`, what the shares leave uncovered is None (no entity), else it is spread evenly."""
    if not items:
        return [None] * n
    given = sum(x.share for x in items if x.share is not None)
    unset = [x for x in items if x.share is None]
    rest = max(0.0, 1.0 - given)
    weights = [x.share if x.share is not None else (rest / len(unset) if unset else 0.0) for x in items]
    names: list[str | None] = [x.name for x in items]
    if fill_none and not unset and given < 1:
        weights, names = [*weights, 1.0 - given], [*names, None]
    counts = allocate(n, weights)
    return [name for name, c in zip(names, counts) for _ in range(c)]


def grid(cfg: RunConfig, n: int, rng: np.random.Generator) -> list[dict]:
    """The diversity cells of `n` inputs for one label: persona, tone, difficulty, sentiment,
    entity and edge case in the config's target proportions, shuffled (each dimension on its own)."""
    d = cfg.diversity
    dims = {
        "persona": _split(n, d.personas, False),
        "tone": _split(n, d.tones, False),
        "difficulty": _split(n, [Share(name=k, share=v) for k, v in d.difficulty.items()], False),
        "sentiment": _split(n, [Share(name=k, share=v) for k, v in d.sentiment.items()], False),
        "entity": _split(n, d.entities, True),
    }
    edges = cfg.task.edge_cases
    k_edge = allocate(n, [d.edge_case_share, 1 - d.edge_case_share])[0] if edges else 0
    dims["edge_case"] = [edges[i % len(edges)] for i in range(k_edge)] + [None] * (n - k_edge)
    for key in dims:
        dims[key] = [dims[key][i] for i in rng.permutation(n)]
    return [{key: dims[key][i] for key in dims} for i in range(n)]


def render(cfg: RunConfig, label: str, examples: list[str], cell: dict, note: str | None = None) -> tuple[str, str]:
    """System and user prompt of one generation call. With no diversity, style, definitions,
    label examples or feedback note this is exactly the spine's prompt (so its cache stays valid)."""
    t, words = cfg.task, getattr(tasks.of(cfg), "PROMPT", PROMPT)
    system = words["system"].format(domain=t.domain)
    if cell.get("persona"):
        system = words["persona"].format(persona=cell["persona"], domain=t.domain)
    if t.style:
        system += f" Style: {t.style}"
    if t.definitions:
        system += " Terms: " + "; ".join(f"{k}: {v}" for k, v in t.definitions.items())
    spec = t.label(label)
    user = words["user"].format(topic=label_topic(cfg, label), examples="\n".join(f"- {x}" for x in examples))
    extra = []
    if spec.negative:
        extra.append("Not this topic (do not write like these):\n" + "\n".join(f"- {x}" for x in spec.negative[:3]))
    if cell.get("tone"):
        extra.append(f"Tone: {cell['tone']}.")
    if cell.get("difficulty"):
        extra.append(words["difficulty"][cell["difficulty"]])
    if cell.get("sentiment"):
        extra.append(f"Sentiment: {cell['sentiment']}.")
    if cell.get("entity"):
        extra.append(f"Mention {cell['entity']}.")
    if cell.get("edge_case"):
        extra.append(f"Edge case: {cell['edge_case']}.")
    if cell.get("refusal"):
        what = "; ".join(t.must_refuse)  # the config refuses refusal cells without the list
        extra.append(f"Make it a request {t.domain} must refuse ({what}), still about this topic.")
    if note:
        extra.append(note)
    if extra:
        head, tail = user.rsplit("\n", 1)
        user = "\n".join([head, *extra, tail])
    return system, user


def plan_slots(
    cfg: RunConfig, seeds: pd.DataFrame, labels: list[str] | None = None, train_counts: dict | None = None
) -> pd.DataFrame:
    """One row per prompt the plan asks for (a *slot*): its id, label and grid cell. Rows per label
    follow the sampling plan; cells follow the diversity targets."""
    labels = labels if labels is not None else sorted(seeds["label"].unique())
    counts = plan_counts(cfg, labels, train_counts)
    rows = []
    for li, label in enumerate(sorted(labels)):  # sorted: row seeds do not depend on the config's order
        cells = grid(cfg, counts[label], np.random.default_rng([cfg.seed, li]))
        refusals = _refusals(cfg, len(cells), li)
        for k, cell in enumerate(cells):
            rows.append(
                {"slot": f"gen-{label}-{k:04d}", "label": label, "li": li, "k": k, **cell, "refusal": refusals[k]}
            )
    return pd.DataFrame(rows, columns=["slot", "label", "li", "k", *GRID, "refusal"])


def _refusals(cfg: RunConfig, n: int, li: int) -> list[bool]:
    share = cfg.diversity.refusal_share
    if not share:
        return [False] * n
    k = allocate(n, [share, 1 - share])[0]
    flags = [True] * k + [False] * (n - k)
    return [flags[i] for i in np.random.default_rng([cfg.seed, li, 7]).permutation(n)]


def _pool(cfg: RunConfig, seeds: pd.DataFrame, label: str) -> list[tuple[str, str]]:
    group = seeds[seeds["label"] == label]
    pool = list(zip(group["id"], group["text"]))
    return pool + [(f"positive-{label}-{i}", x) for i, x in enumerate(cfg.task.label(label).positive)]


def slot_seed(cfg: RunConfig, li: int, k: int, round_: int = 0, attempt: int = 0) -> int:
    """Round 0 keeps the spine's seeds (its cache stays valid); top-up attempts get their own."""
    return cfg.seed * 1_000_003 + li * 10_007 + k + round_ * 1_000_000_007 + attempt * 100_000_007


def requests_for(
    cfg: RunConfig, seeds: pd.DataFrame, slots: pd.DataFrame, round_: int = 0, attempts=None, notes=None
) -> pd.DataFrame:
    """The generation call of each (slot, attempt): a fresh seeded sample of the label's seed
    examples (its positives from the config join the pool), the cell's instructions and, from
    round 1 on, the defect note of the previous batch for that cell."""
    p = cfg.prompts
    attempts = attempts if attempts is not None else [0] * len(slots)
    notes = notes or {}
    pools: dict[str, list] = {}
    rows = []
    for (_, s), a in zip(slots.iterrows(), attempts):
        pool = pools.setdefault(s["label"], _pool(cfg, seeds, s["label"]))
        seed = slot_seed(cfg, int(s["li"]), int(s["k"]), round_, a)
        shown = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))[: p.examples_per_call]]
        note = notes.get((s["label"], s["difficulty"])) or notes.get(s["label"])
        cell = {g: s[g] for g in GRID} | {"refusal": bool(s["refusal"])}
        system, user = render(cfg, s["label"], [x for _, x in shown], cell, note)
        req = Request.chat(system, user, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens, seed=seed)
        suffix = "" if round_ == 0 else f"-r{round_}a{a}"
        rows.append(
            {
                "id": s["slot"] + suffix,
                "slot": s["slot"],
                "round": round_,
                "attempt": a,
                "label": s["label"],
                **cell,
                "examples": [i for i, _ in shown],
                "feedback": note,
                "system": system,
                "request": req,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "id",
            "slot",
            "round",
            "attempt",
            "label",
            *GRID,
            "refusal",
            "examples",
            "feedback",
            "system",
            "request",
        ],
    )


def generation_requests(
    cfg: RunConfig, seeds: pd.DataFrame, labels: list[str] | None = None, train_counts: dict | None = None
) -> pd.DataFrame:
    """Round 0 of the plan: one generation request per slot (what 00's preview and the estimate use)."""
    return requests_for(cfg, seeds, plan_slots(cfg, seeds, labels, train_counts))


def _generate(cfg: RunConfig, plan: pd.DataFrame, llm: LLM, desc: str) -> pd.DataFrame:
    results = llm.generate(list(plan["request"]), desc=desc)
    out = []
    for (_, row), cands in zip(plan.iterrows(), results):
        c = cands[0]
        text = clean_text(c["text"]) if c["error"] is None else ""
        reason = "llm_error" if c["error"] else ("empty" if not text else None)
        out.append(
            {
                **{k: row[k] for k in ["id", "slot", "round", "attempt", "label", *GRID, "refusal"]},
                "text": text,
                "raw": c["text"],
                "examples": row["examples"],
                "feedback": row["feedback"],
                "model": c["model"],
                "seed": c["seed"],
                "prompt_tokens": c["prompt_tokens"],
                "completion_tokens": c["completion_tokens"],
                "latency_s": c["latency_s"],
                "ttft_s": c["ttft_s"],
                "finish_reason": c["finish_reason"],
                "error": c["error"],
                "cached": c["cached"],
                "keep_generate": reason is None,
                "reject_reason_generate": reason,
            }
        )
    return pd.DataFrame(out)


GATES = ["generate", "critique", "constraints", "dedup", "contamination", "domain", "balance"]
GATE_COLUMNS = [f"keep_{g}" for g in GATES]  # the keep_<gate> column each gate marks


def build_prompts(
    cfg: RunConfig,
    seeds: pd.DataFrame,
    llm: LLM,
    embed_fn,
    labels: list[str] | None = None,
    train_counts: dict | None = None,
    eval_index: gates.ShingleIndex | None = None,
    earlier: pd.DataFrame | None = None,
    critic: LLM | None = None,
) -> pd.DataFrame:
    """Generate, critique and gate prompts in rounds until every slot of the plan has a kept prompt
    or `prompts.rounds` is spent. Round r+1 regenerates only the slots still empty
    (`topup_factor` attempts each) and its instructions carry round r's defect statistics.

    `llm` writes the prompts and the critic's rewrites; `critic` (default: `llm`) critiques them.
    `embed_fn(texts)` gives unit vectors (MiniLM); `eval_index` holds the real evaluation rows as
    hashes (contamination); `earlier` has id, text of earlier iterations' prompts. Returns every
    attempt: kept rows and the reject pile, with `keep_prompts` and `reject_reason_prompts` (the first
    gate that said no) over the gates in GATES order.

    Columns: `seeds` has id, text, label. Out, one row per attempt: id, slot, round, attempt,
    label, the grid cells (persona, tone, difficulty, sentiment, entity, edge_case, refusal), text,
    raw, examples, feedback, the call's metadata (model, seed, prompt_tokens, completion_tokens,
    latency_s, ttft_s, finish_reason, error, cached), keep_<gate> and reject_reason_<gate> for each
    gate, the critic's critique_* columns, original_text, rewritten, pii_found, dup_of, dup_similarity,
    contaminated_split, domain_score, balance_detail, keep_prompts and reject_reason_prompts."""
    p = cfg.prompts
    slots = plan_slots(cfg, seeds, labels, train_counts)
    index = gates.dedup_index(cfg, seeds, earlier)
    ref_vecs = embed_fn(gates.domain_reference(cfg, seeds, list(slots["label"].unique())))
    rows = pd.DataFrame()
    notes: dict = {}
    seconds = {"generate": 0.0, "critique": 0.0}
    for r in range(p.rounds):
        if r == 0:
            todo, attempts = slots, None
        else:
            filled = set(rows.loc[gates.alive(rows), "slot"])
            missing = slots[~slots["slot"].isin(filled)]
            if missing.empty:
                break
            n = math.ceil(len(missing) * p.topup_factor)
            todo = missing.iloc[[j % len(missing) for j in range(n)]]
            attempts = [j // len(missing) for j in range(n)]
        plan = requests_for(cfg, seeds, todo, r, attempts, notes)
        systems = dict(zip(plan["id"], plan["system"]))
        t0 = time.perf_counter()
        batch = _generate(cfg, plan, llm, f"01 inputs, round {r + 1}")
        seconds["generate"] += time.perf_counter() - t0
        rows = pd.concat([rows, batch], ignore_index=True) if len(rows) else batch
        for g in GATES:
            if f"keep_{g}" not in rows:
                rows[f"keep_{g}"] = True
                rows[f"reject_reason_{g}"] = None
            rows[f"keep_{g}"] = rows[f"keep_{g}"].fillna(True).astype(bool)  # the new batch's rows
        new = rows.index[rows["round"] == r]
        t0 = time.perf_counter()  # with the critic off, critique() only adds its columns (every row kept)
        todo = list(new[gates.alive(rows)[new]]) if p.critique else []
        critique.critique(cfg, rows, todo, critic or llm, systems, writer=llm)
        seconds["critique"] += time.perf_counter() - t0
        gates.constraints(cfg, rows, new[gates.alive(rows)[new]])
        gates.dedup(rows, new[gates.alive(rows)[new]], index)
        if eval_index is not None:
            gates.contamination(rows, new[gates.alive(rows)[new]], eval_index)
        live = new[gates.alive(rows)[new]]
        gates.domain(cfg, rows, live, gates.domain_scores(embed_fn(list(rows.loc[live, "text"])), ref_vecs))
        notes = feedback_notes(cfg, rows.loc[new])
    gates.balance(cfg, rows)
    cols = [f"keep_{g}" for g in GATES]
    rows["keep_prompts"] = rows[cols].all(axis=1)
    rows["reject_reason_prompts"] = None
    for g in reversed(GATES):  # the first gate that said no names the reason
        bad = ~rows[f"keep_{g}"]
        rows.loc[bad, "reject_reason_prompts"] = rows.loc[bad, f"reject_reason_{g}"]
    rows.attrs["seconds"] = {k: round(v, 2) for k, v in seconds.items()}  # LLM time per phase, for the estimate
    return rows


# ---------------------------------------------------------------- defect statistics and feedback

_GATE_DEFECT = {
    "empty": "empty: the reply had no message",
    "llm_error": None,
    "too_short": "too short",
    "too_long": "too long",
    "wrong_language": "not in the asked language",
    "profanity": "profane",
    "forbidden": "forbidden content",
    "format": "talks about the task instead of being the customer's message",
    "pii": "contains personal data",
    "entity_missing": "missing the entity it had to mention",
    "duplicate": "a repeat of another message",
    "near_duplicate": "almost the same as another message",
    "copy_of_seed": "a copy of one of the examples",
    "seen_before": "a repeat of an earlier iteration's message",
    "off_domain": "not about {domain}",
}


def row_defects(rows: pd.DataFrame) -> pd.Series:
    """Each row's defect: the critic's first defect when it asked for a rewrite or a drop, else the
    first gate reason (generation, constraints, dedup, domain); None for a clean row. Contamination
    and balance are not defects of the writing and are left out (and contaminated rows must not
    reach the generator's instructions)."""
    out = pd.Series(None, index=rows.index, dtype=object)
    for g in ["domain", "dedup", "constraints", "critique", "generate"]:
        col = f"reject_reason_{g}"
        if col in rows:
            bad = rows[col].notna() & (rows[col] != "llm_error")
            out[bad] = rows.loc[bad, col]
    if "critique_action" in rows:
        flagged = rows["critique_action"].isin(["rewrite", "drop"]) & rows["critique_defects"].notna()
        out[flagged] = rows.loc[flagged, "critique_defects"].str.split(",").str[0]
    if "keep_contamination" in rows:
        out[~rows["keep_contamination"].astype(bool)] = None
    return out


def defect_rate(rows: pd.DataFrame) -> pd.DataFrame:
    """Per round: rows generated, rows with a defect, the rate and the most frequent defect."""
    d = rows.assign(defect=row_defects(rows))
    out = []
    for r, g in d.groupby("round"):
        top = g["defect"].value_counts()
        out.append(
            {
                "round": int(r) + 1,
                "generated": len(g),
                "defective": int(g["defect"].notna().sum()),
                "defect_rate": round(float(g["defect"].notna().mean()), 3),
                "top_defect": top.index[0] if len(top) else None,
                **{f"n_{k}": int(v) for k, v in top.items()},
            }
        )
    table = pd.DataFrame(out)
    counts = [c for c in table.columns if c.startswith("n_")]
    table[counts] = table[counts].fillna(0).astype(int)
    return table


def feedback_notes(cfg: RunConfig, batch: pd.DataFrame) -> dict:
    """What batch k teaches batch k+1: for each (label, difficulty) cell and each label with
    defects, the most frequent defect, how often, and one rejected example (PII redacted). Keys:
    (label, difficulty) tuples and label strings."""
    d = batch.assign(defect=row_defects(batch))
    notes: dict = {}
    levels = [["label", "difficulty"], ["label"]] if batch["difficulty"].notna().any() else [["label"]]
    for cols in levels:
        for key, g in d.groupby(cols):
            bad = g[g["defect"].notna()]
            if bad.empty:
                continue
            defect, n = bad["defect"].value_counts().index[0], int(bad["defect"].value_counts().iloc[0])
            ex = bad[bad["defect"] == defect].iloc[0]
            example = ex.get("original_text") if isinstance(ex.get("original_text"), str) else ex["text"]
            example = quality.redact(str(example or ""))[0][:160]
            what = (_GATE_DEFECT.get(defect) or critique.DESCRIBE.get(defect, defect)).format(domain=cfg.task.domain)
            note = f"Earlier attempts here were rejected as {defect} ({n} of {len(g)}: {what})"
            note += f', e.g. "{example}". Avoid that.' if example else ". Avoid that."
            notes[key if len(cols) > 1 else key[0]] = note
    return notes


def coverage(cfg: RunConfig, rows: pd.DataFrame) -> pd.DataFrame:
    """Per grid dimension the config sets: each value's target share and the share generated (all
    rows) and kept by this stage."""
    d = cfg.diversity
    targets: dict[str, dict] = {}
    for dim, items in (("persona", d.personas), ("tone", d.tones), ("entity", d.entities)):
        if items:
            n = len(rows) or 1
            targets[dim] = dict(pd.Series(_split(n, items, dim == "entity")).fillna("—").value_counts() / n)
    for dim, shares in (("difficulty", d.difficulty), ("sentiment", d.sentiment)):
        if shares:
            targets[dim] = dict(shares)
    if cfg.task.edge_cases and d.edge_case_share:
        targets["edge_case"] = {"(any edge case)": d.edge_case_share}
    out = []
    kept = rows[rows["keep_prompts"]] if "keep_prompts" in rows else rows
    for dim, target in targets.items():
        for value, share in target.items():
            col = rows[dim].notna() if value == "(any edge case)" else rows[dim].fillna("—") == value
            kcol = col[kept.index]
            out.append(
                {
                    "dimension": dim,
                    "value": value,
                    "target": round(float(share), 3),
                    "generated": round(float(col.mean()), 3) if len(rows) else None,
                    "kept": round(float(kcol.mean()), 3) if len(kept) else None,
                }
            )
    return pd.DataFrame(out, columns=["dimension", "value", "target", "generated", "kept"])


# ---------------------------------------------------------------- what the notebook shows


def funnel_by_label(rows: pd.DataFrame) -> pd.DataFrame:
    """Per label: the plan's target, prompts generated (every attempt), critiques parsed, rows alive
    after each gate in order, and kept."""
    alive = pd.Series(True, index=rows.index)
    out = pd.DataFrame(
        {
            "target": rows.drop_duplicates("slot").groupby("label").size(),
            "generated": rows.groupby("label").size(),
        }
    )
    if "critique_parsed" in rows:
        out["critiqued"] = rows[rows["critique_parsed"].astype(bool)].groupby("label").size()
    for g in GATES:
        alive &= rows[f"keep_{g}"].astype(bool)
        out[f"after {g}"] = rows[alive].groupby("label").size()
    out["kept"] = out[f"after {GATES[-1]}"]
    out = out.fillna(0).astype(int)
    total = out.sum().to_frame("all labels").T
    return pd.concat([total, out]).rename_axis("label")


def shortfall(rows: pd.DataFrame) -> pd.DataFrame:
    """The cells of `coverage_cells` that fell short, with how many prompts are missing (per label
    alone when the config sets no difficulty)."""
    cells = coverage_cells(rows)
    cells["missing"] = cells["target"] - cells["kept"]
    short = cells[cells["missing"] > 0].reset_index(drop=True)
    return short if rows["difficulty"].notna().any() else short.drop(columns="difficulty")


def coverage_cells(rows: pd.DataFrame) -> pd.DataFrame:
    """Target and kept per label × difficulty (label × all when difficulty is not set)."""
    d = rows.assign(difficulty=rows["difficulty"].fillna("all"))
    target = d.drop_duplicates("slot").groupby(["label", "difficulty"]).size().rename("target")
    kept = d[d["keep_prompts"]].groupby(["label", "difficulty"]).size().rename("kept")
    return pd.concat([target, kept], axis=1).fillna(0).astype(int).reset_index()
