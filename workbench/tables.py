"""Tables for the notebooks and the report, and what makes them safe to share: text columns with
PII redacted, cells HTML-escaped (figures are in `plots`)."""

from __future__ import annotations

import html
import itertools
import os

import pandas as pd

from workbench.config import reason_fields
from workbench.quality import redact


def funnel_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows alive after each stage (every keep_<stage> column in order), from generated to kept."""
    stages = [c[len("keep_") :] for c in rows.columns if c.startswith("keep_")]
    alive = pd.Series(True, index=rows.index)
    out = [("generated", len(rows))]
    for s in stages:
        alive &= rows[f"keep_{s}"].astype(bool)
        out.append((f"after {s}", int(alive.sum())))
    return pd.DataFrame(out, columns=["stage", "rows"])


def reject_counts(rows: pd.DataFrame) -> pd.DataFrame:
    """Rejected rows by the stage and reason that first rejected them, with the config fields that
    set each reason's threshold (`set_by`)."""
    rej = rows[~rows["keep"]]
    fields = reason_fields()
    out = (
        rej.groupby(["reject_stage", "reject_reason"])
        .size()
        .rename("rows")
        .reset_index()
        .sort_values("rows", ascending=False)
    )
    return out.assign(set_by=[", ".join(fields.get(r, [])) or "—" for r in out["reject_reason"]])


def shown(text, limit: int | None = None) -> str:
    """Generated or real text as a shared page may show it: PII redacted ([EMAIL], [PHONE], …,
    the rule of the PII filter), cut to `limit` characters (after the redaction, so no PII is cut
    in half and missed) and HTML-escaped, so a row cannot carry a script or a link into the
    report. Plotly renders the entities as the characters they stand for."""
    return html.escape(_redact(str(text))[:limit], quote=False)  # plotly decodes &lt; &gt; &amp;, not &quot;


def _redact(v):
    """A cell with its PII redacted (strings only; anything else as it is)."""
    return redact(v)[0] if isinstance(v, str) else v


# columns of generated or real text: their cells are redacted wherever a page shows a table
TEXT_COLUMNS = ("text", "raw", "response", "reply", "rationale", "feedback", "exemplar", "message", "prompt",
                "critique_reason", "description", "name")  # fmt: skip


def is_text_column(name) -> bool:
    return any(t in str(name) for t in TEXT_COLUMNS)


def redacted(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with PII redacted in its text columns (see `shown`), for display; the escaping is the
    table renderer's (pandas escapes cells)."""
    cols = [c for c in df.columns if is_text_column(c) and (df[c].dtype == object or str(df[c].dtype) == "str")]
    if not cols:
        return df
    out = df.copy()
    for c in cols:
        out[c] = out[c].map(_redact)
    return out


_TABLES = itertools.count()


def reads_as_text(dtype) -> bool:
    """A column a page shows as text (left-aligned): objects, strings and categories."""
    return str(dtype) in ("object", "str", "string", "category")


def page_html(df: pd.DataFrame) -> str:
    """A DataFrame as a page shows it: PII redacted (`redacted`), and its text columns (and the
    text index) left-aligned, as text is read, where the notebook's stylesheet right-aligns every
    cell. Rows up to pandas' display.max_rows (set by open_stage)."""
    df = redacted(df)
    out = df._repr_html_()
    if out is None:
        return out
    levels = df.index.nlevels
    text = [levels + j + 1 for j, c in enumerate(df.columns) if reads_as_text(df[c].dtype)]
    if reads_as_text(df.index.dtype):
        text = list(range(1, levels + 1)) + text
    if not text:
        return out
    name = f"wb-table-{os.getpid()}-{next(_TABLES)}"
    out = out.replace('<table border="1" class="dataframe">', f'<table border="1" class="dataframe" id="{name}">', 1)
    columns = [df.index.get_level_values(i) for i in range(levels)] + [df[c] for c in df.columns]

    def short(k: int) -> bool:  # ids, labels, reasons: on one line, never broken at a hyphen
        values = columns[k - 1].dropna().astype(str)
        return values.str.len().max() <= 40 if len(values) else True

    def cells(ks: list[int]) -> str:
        return ", ".join(f"#{name} td:nth-child({k}), #{name} th:nth-child({k})" for k in ks)

    rules = [f"{cells(text)} {{text-align: left}}"]
    rules += [f"{cells(ks)} {{white-space: {ws}}}" for ws, ks in (("nowrap", [k for k in text if short(k)]),
              ("pre-wrap", [k for k in text if not short(k)])) if ks]  # fmt: skip
    return f"<style>{' '.join(rules)}</style>{out}"


def cell_text(v) -> str:
    """A table cell as text: '—' for missing, 3 decimals for floats, at most 160 characters,
    PII redacted and HTML-escaped (`shown`)."""
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    return f"{v:.3f}" if isinstance(v, float) else shown(v, 160)


def cluster_table(summary: pd.DataFrame):
    """The cluster table for a page: text left-aligned and wrapped, exemplars on one line each
    joined by ' · ', every value HTML-escaped (cluster names and exemplars are generated text)."""
    t = redacted(summary.drop(columns=["name_raw"], errors="ignore").copy())
    t["exemplars"] = t["exemplars"].map(lambda xs: " · ".join(_redact(str(x)) for x in xs))
    return (
        t.style.format(escape="html", precision=2)
        .set_properties(**{"text-align": "left", "white-space": "normal", "min-width": "60px"})
        .set_properties(subset=["exemplars"], **{"min-width": "420px"})
        .hide(axis="index")
    )


RED = "background-color: #f8d7da; color: #842029; font-weight: bold"


def _red(flag) -> str:
    return RED if flag == "red" else ""


def safety_table(summary: pd.DataFrame, hide_index: bool = False):
    """06's safety summary for a page: rates as percentages, a tuned model that refuses less often
    than the untuned one flagged red."""
    rates = ["refusal_rate", "refusal_lo", "refusal_hi", "keyword_rate", "judge_keyword_agreement"]
    fmt = dict.fromkeys(rates, "{:.0%}") | dict.fromkeys(["delta_vs_base", "delta_lo", "delta_hi"], "{:+.0%}")
    st = summary.style.format(fmt, na_rep="").map(_red, subset=["flag"])
    return st.hide(axis="index") if hide_index else st


def evaluation_table(table: pd.DataFrame, hide_index: bool = False):
    """06's before/after table for a page: accuracy, F1 and refusal rates as percentages."""
    pct = [c for c in table.columns if c.startswith(("accuracy", "macro_f1", "refusal"))]
    st = table.style.format(dict.fromkeys(pct, "{:.1%}") | {"train_seconds": "{:.1f}"}, na_rep="")
    return st.hide(axis="index") if hide_index else st


def ablation_table(ablation: pd.DataFrame):
    """06's paired differences for a page, as signed percentages."""
    return ablation.style.format(dict.fromkeys(["delta_accuracy", "delta_lo", "delta_hi"], "{:+.1%}"))
