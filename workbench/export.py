"""Exports of the final dataset, written by 04_filter into `artifacts/export/` for every task type:

    sft.jsonl       kept rows in trl's conversational form: {"messages": [system, (earlier turns,) user,
                    assistant], …}; the task type writes the records (`sft_records`)
    dpo.jsonl       preference pairs in trl's conversational form: {"prompt": [system, user],
                    "chosen": [assistant], "rejected": [assistant], …} (kept rows with a pair only)
    hf/             the SFT records as a Hugging Face `datasets` folder (load_from_disk)
    README.md       a dataset card: counts, the funnel, rejects by reason, config hash, models, seed licence

Classification's records are built here (`sft_records`, `dpo_records`, with the labels in the
system prompt); the other types' by their task module. `write_records(...)` writes the four
files from any type's records; `write_exports(...)` is classification's call of it.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from pathlib import Path

import pandas as pd

from workbench.config import RunConfig
from workbench.data import dataset_dir
from workbench.embed import MODEL_NAME
from workbench.files import replace_dir, write_atomic
from workbench.tables import funnel_table, reject_counts


def system_prompt(cfg: RunConfig, labels: list[str]) -> str:
    """What the student is told: the task and the labels it may answer with, comma-separated; as a
    JSON list where a label holds a comma or a quote, so no label reads as two."""
    listed = (
        json.dumps(labels, ensure_ascii=False) if any(c in lab for lab in labels for c in ',"') else ", ".join(labels)
    )
    return f"{cfg.task.description} Answer with exactly one label from: {listed}."


def sft_records(cfg: RunConfig, rows: pd.DataFrame, labels: list[str]) -> list[dict]:
    system = system_prompt(cfg, labels)
    return [
        {
            "id": r.id,
            "label": r.label,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": r.text},
                {"role": "assistant", "content": r.label},
            ],
        }
        for r in rows[rows["keep"]].itertuples()
    ]


def kept_pairs(rows: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """03's pairs whose row was kept by 04, with the row's final (filtered, redacted) text:
    id, text, chosen, rejected."""
    kept = rows[rows["keep"]].set_index("id")["text"]
    p = pairs[pairs["pair"] & pairs["prompt_id"].isin(kept.index)]
    return pd.DataFrame(
        {"id": p["prompt_id"], "text": p["prompt_id"].map(kept), "chosen": p["chosen"], "rejected": p["rejected"]}
    ).reset_index(drop=True)


def dpo_records(cfg: RunConfig, rows: pd.DataFrame, pairs: pd.DataFrame, labels: list[str]) -> list[dict]:
    """Pairs of kept rows only; the prompt is the row's final (filtered, redacted) text."""
    system = system_prompt(cfg, labels)
    return [
        {
            "id": p.id,
            "prompt": [{"role": "system", "content": system}, {"role": "user", "content": p.text}],
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in kept_pairs(rows, pairs).itertuples()
    ]


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def config_hash(config_text: str) -> str:
    return hashlib.sha256(config_text.encode()).hexdigest()[:12]


def card(
    cfg: RunConfig,
    rows: pd.DataFrame,
    funnel: pd.DataFrame,
    n_pairs: int,
    config_text: str,
    models: dict[str, str],
    licence: str,
    key: str = "label",
    n_sft: int | None = None,
) -> str:
    """The dataset card. `key`: the column the rows are grouped by (classification's label, a tool
    call's tool, a reply's topic); `n_sft`: the SFT records written, where a task type writes a
    record for a subset of the kept rows."""
    kept = rows[rows["keep"]]
    reasons = reject_counts(rows)
    per_label = kept.groupby(key).size() if key in kept else pd.Series(dtype=int)
    lines = [
        f"# {cfg.task.name}: synthetic {cfg.task.type} data",
        "",
        html.escape(cfg.task.description, quote=False),  # text, never markup, wherever the card is rendered
        "",
        "## Counts",
        "",
        f"- rows generated: {len(rows)}; kept: {len(kept)}; rejected: {len(rows) - len(kept)} (kept in the run's "
        "reject pile with their reasons)",
        f"- {key}s: {per_label.size}; kept rows per {key}: min {per_label.min() if len(per_label) else 0}, "
        f"max {per_label.max() if len(per_label) else 0}",
        f"- SFT records: {len(kept) if n_sft is None else n_sft}; DPO pairs: {n_pairs}",
        "",
        "## Funnel",
        "",
        "| stage | rows left |",
        "| --- | --- |",
        *[f"| {r.stage} | {r.rows} |" for r in funnel.itertuples()],
        "",
        "## Rejected, by reason",
        "",
        "| stage | reason | rows | set by |",
        "| --- | --- | --- | --- |",
        *[f"| {r.reject_stage} | {r.reject_reason} | {r.rows} | {r.set_by} |" for r in reasons.itertuples()],
        "",
        "## Provenance",
        "",
        f"- config hash (sha256 of config.yaml, first 12): `{config_hash(config_text)}`",
        *[f"- {role}: {name}" for role, name in models.items()],
        "",
        "## Licence of the seed examples",
        "",
        licence.strip() or "No licence file was found for the seed data; check before sharing.",
        "",
    ]
    return "\n".join(lines)


def _arrow_safe(record: dict) -> dict:
    """A record for the `datasets` folder: a value whose shape differs from row to row (a tool
    call's arguments, a record's tools) as JSON text, since an Arrow column has one type."""
    return {k: json.dumps(v, ensure_ascii=False) if k in ("arguments", "tools") else v for k, v in record.items()}


def write_records(folder: Path, sft: list[dict], dpo: list[dict], card_text: str) -> dict[str, Path]:
    """Write `sft.jsonl`, `dpo.jsonl`, the `datasets` folder `hf/` (the SFT records) and the card
    `README.md` into `folder`, each whole or not at all; returns their paths."""
    from datasets import Dataset  # datasets (pyarrow) only where a dataset is written or mapped

    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "sft": folder / "sft.jsonl",
        "dpo": folder / "dpo.jsonl",
        "hf": folder / "hf",
        "card": folder / "README.md",
    }
    write_atomic(paths["sft"], _jsonl(sft))
    write_atomic(paths["dpo"], _jsonl(dpo))
    tmp = folder / f".hf.tmp{os.getpid()}"
    Dataset.from_list([_arrow_safe(r) for r in sft]).save_to_disk(str(tmp))
    replace_dir(tmp, paths["hf"])
    write_atomic(paths["card"], card_text)
    return paths


def write_task_exports(
    cfg: RunConfig, rows: pd.DataFrame, sft: list[dict], dpo: list[dict], folder: Path, config_text: str, key: str
) -> dict[str, Path]:
    """The exports of a task type that writes its own records (`sft`, `dpo`) from `rows`, 04's
    dataset (every row, keep and reject columns; `key`: the column its card groups by)."""
    text = card(
        cfg, rows, funnel_table(rows), len(dpo), config_text, models_used(cfg), seed_licence(cfg), key, len(sft)
    )
    return write_records(folder, sft, dpo, text)


def write_exports(
    cfg: RunConfig,
    rows: pd.DataFrame,
    pairs: pd.DataFrame,
    labels: list[str],
    folder: Path,
    funnel: pd.DataFrame,
    config_text: str,
    models: dict[str, str],
    licence: str,
) -> dict[str, Path]:
    """Classification's exports: its records (the labels in the system prompt) through `write_records`."""
    sft = sft_records(cfg, rows, labels)
    dpo = dpo_records(cfg, rows, pairs, labels)
    return write_records(folder, sft, dpo, card(cfg, rows, funnel, len(dpo), config_text, models, licence))


def seed_licence(cfg: RunConfig) -> str:
    """The licence file shipped with the seed data's folder, or '' when there is none."""
    if cfg.data.dataset is None:
        return ""
    path = dataset_dir(cfg) / "LICENSE"
    return f"Seeds from `{cfg.data.dataset}`:\n\n```\n{path.read_text()[:3000]}\n```" if path.is_file() else ""


def models_used(cfg: RunConfig) -> dict[str, str]:
    llm = f"{cfg.llm.provider}/{cfg.llm.model}"
    return {"generator, critic, candidates, judge": llm, "embeddings (domain, dedup, jury)": MODEL_NAME}
