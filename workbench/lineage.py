"""Iterations side by side: what changed in the config, in the data and in the evaluation.

A run's lineage is the chain of `parent` links in provenance (`chain(run)`, oldest first). For
two consecutive iterations a → b:

`config_diff(a, b)`   fields whose value changed (labels compared one by one)
`data_diff(a, b)`     generated / kept rows, reject and defect rates, and kept rows per label
`eval_diff(a, b)`     every model of both evaluation tables: accuracy with 95% CI in each and the
                      paired change on the same test rows with its paired-bootstrap CI (probes on
                      every test row, causal students on their shared sample)
`per_label_diff(a, b)` accuracy per label of one model, before and after
`cluster_diff(a, b)`  each failure cluster of a (by its dominant true → predicted labels) and how
                      many dev failures of that kind b still has: shrank or grew
`write_index(task_dir)` writes runs/<task>/index.html: every run, and these tables for each
                      iteration against its parent.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from workbench import evaluate, structured
from workbench.config import _plain, _yaml
from workbench.files import write_atomic
from workbench.runs import ancestors

MAIN_MODEL = "probe: seeds_synthetic"
TARGET = "seeds + filtered − seeds only"  # 06's paired difference on every test row: > 0 with its CI is the goal


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _table(run: Path, name: str) -> pd.DataFrame | None:
    path = Path(run) / "artifacts" / f"{name}.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def chain(run: Path) -> list[Path]:
    """The run and its ancestors through provenance `parent`, oldest first."""
    return [*reversed(ancestors(run)), Path(run)]


def task_runs(task_dir: Path) -> list[Path]:
    return sorted(p for p in Path(task_dir).iterdir() if p.is_dir() and (p / "provenance.json").is_file()
                  and p.name[:3].isdigit())  # fmt: skip


def _flat(obj, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: obj}


def _config(text: str) -> dict:
    doc = _plain(_yaml().load(text)) or {}
    labels = (doc.get("task") or {}).get("labels")
    if isinstance(labels, list):  # one entry per label, so a definition shows as one changed field
        doc["task"]["labels"] = {
            (x if isinstance(x, str) else x["name"]): ({} if isinstance(x, str) else {k: v for k, v in x.items()
                                                                                      if k != "name"})
            for x in labels
        }  # fmt: skip
    return doc


def config_diff(a: Path, b: Path) -> pd.DataFrame:
    return config_diff_texts((Path(a) / "config.yaml").read_text(), (Path(b) / "config.yaml").read_text())


def config_diff_texts(a: str, b: str) -> pd.DataFrame:
    """Fields whose value differs between two config texts: field, before, after."""
    fa, fb = _flat(_config(a)), _flat(_config(b))
    rows = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key), fb.get(key)
        if va != vb and not (va in (None, {}, [], "") and vb in (None, {}, [], "")):  # unset vs empty: no change
            rows.append({"field": key, "before": _short(va), "after": _short(vb)})
    return pd.DataFrame(rows, columns=["field", "before", "after"])


def _short(v, n: int = 160) -> str:
    s = "" if v is None else (json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v)
    return s if len(s) <= n else s[: n - 1] + "…"


def _stats(run: Path) -> dict:
    m = _json(Path(run) / "metrics.json")
    p, f, g = m.get("01_prompts", {}), m.get("04_filter", {}), m.get("07_gaps", {})
    reasons = p.get("reasons") or {}
    defects = sum(v for k, v in reasons.items() if k in ("vague", "redundant", "mis_scoped", "unrealistic"))
    return {
        "prompts generated": p.get("generated"),
        "prompts kept": p.get("kept"),
        "prompt defect rate (critic)": defects / p["generated"]
        if p.get("generated") and p.get("critiques_parsed") is not None  # None: the critic was off
        else None,
        "rows judged and filtered": f.get("rows"),
        "rows kept": f.get("kept"),
        "reject rate": (f["rows"] - f["kept"]) / f["rows"] if f.get("rows") else None,
        "DPO pairs": f.get("dpo_pairs", m.get("03_judge", {}).get("pairs")),  # tools: 03 makes the pairs
        "dev accuracy (student)": g.get("dev_accuracy"),
        "dev slot F1 (student)": g.get("dev_slot_f1"),  # extraction and tools
        "dev win-rate against the untuned (student)": g.get("dev_win_rate"),  # replies
        "failures clustered": g.get("failures"),
        "clusters": g.get("clusters"),
    }


def data_diff(a: Path, b: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    sa, sb = _stats(a), _stats(b)
    keys = [k for k in sa if sa[k] is not None or sb[k] is not None]  # a statistic no run of this task type has
    stats = pd.DataFrame({"stat": keys, "before": [sa[k] for k in keys], "after": [sb[k] for k in keys]})
    stats["change"] = [
        (y - x) if isinstance(x, int | float) and isinstance(y, int | float) else None
        for x, y in zip(stats["before"], stats["after"])
    ]
    counts = []
    for run in (a, b):
        d = _table(run, "dataset")
        counts.append(d[d["keep"].astype(bool)]["label"].value_counts() if d is not None else pd.Series(dtype=int))
    per = pd.concat(counts, axis=1, keys=["before", "after"]).fillna(0).astype(int)
    per["change"] = per["after"] - per["before"]
    per = per.rename_axis("label").reset_index().sort_values(["change", "label"], ascending=[False, True])
    return stats, per.reset_index(drop=True)


def _exact_answers(run: Path) -> dict[str, pd.DataFrame]:
    """Tool calls and extraction: model → (id, label '1', pred '1' or '0'), whether its answer to
    each shared test row (06's `test_answers`) is exactly right, so that `eval_diff` pairs the
    exact-match share of two runs on the same rows as it pairs accuracy."""
    t = _table(run, "test_answers")
    if t is None:
        return {}
    gold = [{"tool": tool, "arguments": json.loads(a) if isinstance(a, str) else a}
            for tool, a in zip(t["tool"], t["arguments"])]  # fmt: skip
    out = {}
    for col in (c for c in t.columns if c.startswith("answer: ")):
        said = [json.loads(x) if isinstance(x, str) and x else None for x in t[col]]
        said = [x if x is None or "tool" in x else {"tool": g["tool"], "arguments": x} for x, g in zip(said, gold)]
        ok = ["1" if structured.exact(g, x) else "0" for g, x in zip(gold, said)]
        out[col[len("answer: ") :]] = pd.DataFrame({"id": t["id"], "label": "1", "pred": ok})
    return out


def _predictions(run: Path) -> dict[str, pd.DataFrame]:
    """model → (id, label, pred) on the rows it was scored on: every test row for the probes where
    06 saved them, the shared sample otherwise; for tool calls and extraction, whether each answer
    is exactly right (`_exact_answers`)."""
    out = _exact_answers(run)
    for name in ("test_predictions", "test_predictions_all"):  # the second (every row) wins for probes
        t = _table(run, name)
        if t is None:
            continue
        for col in (c for c in t.columns if c.startswith("pred: ")):
            out[col[6:]] = t[["id", "label"]].assign(pred=t[col].astype(str))
    return out


def eval_diff(a: Path, b: Path, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    pa, pb = _predictions(a), _predictions(b)
    rows = []
    for model in [m for m in pb if m in pa]:
        both = pa[model].merge(pb[model], on=["id", "label"], suffixes=("_a", "_b"))
        if both.empty:
            continue
        y = both["label"].to_numpy()
        row = {"model": model, "test_rows": len(both)}
        for side in ("a", "b"):
            p = both[f"pred_{side}"].to_numpy()
            lo, hi = evaluate.bootstrap_ci(y, p, evaluate._accuracy, bootstrap, seed)
            key = "before" if side == "a" else "after"
            row |= {key: float((p == y).mean()), f"{key}_lo": lo, f"{key}_hi": hi}
        d, lo, hi = evaluate.paired_delta(y, both["pred_b"], both["pred_a"], bootstrap, seed)
        row |= {"change": d, "change_lo": lo, "change_hi": hi}
        row["verdict"] = (
            "rose" if lo > 0 else "fell" if hi < 0 else "no change the CI can tell" if bootstrap else "not tested"
        )
        rows.append(row)
    cols = ["model", "test_rows", "before", "before_lo", "before_hi", "after", "after_lo", "after_hi"]
    return pd.DataFrame(rows, columns=[*cols, "change", "change_lo", "change_hi", "verdict"])


WIN_SCORE = {"chosen": 1.0, "rejected": 0.0}  # 06's outcome of a student's reply against the untuned one; else a tie


def win_diff(a: Path, b: Path, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Replies and summaries: each student's score against the untuned model (a win 1, a tie 0.5, a
    loss 0; 06's `wins`) on the test inputs both runs answered, before and after, with the paired
    change and its 95% bootstrap interval."""
    cols = ["model", "test_rows", "before", "after", "change", "change_lo", "change_hi", "verdict"]
    wa, wb = _table(a, "wins"), _table(b, "wins")
    if wa is None or wb is None:
        return pd.DataFrame(columns=cols)
    rows = []
    for model in [m for m in dict.fromkeys(wb["model"]) if m in set(wa["model"])]:
        both = wa.loc[wa["model"] == model, ["row", "outcome"]].merge(
            wb.loc[wb["model"] == model, ["row", "outcome"]], on="row", suffixes=("_a", "_b")
        )
        if both.empty:
            continue
        sa, sb = (both[f"outcome_{x}"].map(WIN_SCORE).fillna(0.5).to_numpy() for x in ("a", "b"))
        d = sb - sa
        lo = hi = float("nan")
        if bootstrap:
            idx = np.random.default_rng(seed).integers(0, len(d), (bootstrap, len(d)))
            lo, hi = (float(x) for x in np.quantile(d[idx].mean(axis=1), [0.025, 0.975]))
        verdict = "rose" if lo > 0 else "fell" if hi < 0 else "no change the CI can tell" if bootstrap else "not tested"
        rows.append(dict(zip(cols, [model, len(both), sa.mean(), sb.mean(), d.mean(), lo, hi, verdict])))
    return pd.DataFrame(rows, columns=cols)


def per_label_diff(a: Path, b: Path, model: str = MAIN_MODEL) -> pd.DataFrame:
    pa, pb = _predictions(a), _predictions(b)
    if model not in pa or model not in pb:
        return pd.DataFrame(columns=["label", "rows", "before", "after", "change"])
    both = pa[model].merge(pb[model], on=["id", "label"], suffixes=("_a", "_b"))
    both = both.assign(before=both["pred_a"] == both["label"], after=both["pred_b"] == both["label"])
    out = both.groupby("label").agg(rows=("id", "size"), before=("before", "mean"), after=("after", "mean"))
    out["change"] = out["after"] - out["before"]
    return out.reset_index().sort_values(["change", "label"]).reset_index(drop=True)


def cluster_diff(a: Path, b: Path) -> pd.DataFrame:
    """Each cluster of a, named by its dominant true → predicted labels, against the dev failures of
    the same kind in b (the same dev rows: the split is fixed per task)."""
    ca, fa, fb = _table(a, "clusters"), _table(a, "failures"), _table(b, "failures")
    cols = ["cluster", "name", "true", "predicted", "before", "after", "change", "trend"]
    if ca is None or fa is None or fb is None:
        return pd.DataFrame(columns=cols)

    def dev_count(f: pd.DataFrame, true: str, pred: str) -> int:
        f = f[f["source"] == "dev"] if "source" in f else f
        return int(((f["label"] == true) & (f["predicted"] == pred)).sum())

    rows = []
    for c in ca[ca["cluster"] >= 0].itertuples():
        before, after = (
            dev_count(fa, c.dominant_true, c.dominant_predicted),
            dev_count(fb, c.dominant_true, c.dominant_predicted),
        )
        trend = "shrank" if after < before else "grew" if after > before else "same"
        rows.append(
            {"cluster": c.cluster, "name": c.name, "true": c.dominant_true, "predicted": c.dominant_predicted,
             "before": before, "after": after, "change": after - before, "trend": trend}
        )  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def overview(runs: list[Path], bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per run: parent, status, accepted edits, kept rows, dev accuracy, test accuracy with
    its 95% CI of seeds only, seeds + filtered synthetic and the causal SFT student, and 06's paired
    difference seeds + filtered − seeds only ("above" when its interval is above zero)."""
    rows = []
    for run in runs:
        prov, stats = _json(run / "provenance.json"), _stats(run)
        preds = _predictions(run)
        row = {
            "run": run.name,
            "parent": prov.get("parent") or "",
            "status": prov.get("status"),
            "edits accepted": ", ".join((prov.get("patch") or {}).get("accepted", [])),
            "rows kept": stats["rows kept"],
            "dev accuracy": stats["dev accuracy (student)"],
        }
        if stats["dev slot F1 (student)"] is not None:  # extraction and tools: slot F1 from 06's table
            del row["dev accuracy"]
            row["dev slot F1"] = stats["dev slot F1 (student)"]
            _slot_f1_columns(run, row)
            rows.append(row)
            continue
        for model in ("probe: seeds_only", MAIN_MODEL, "causal: sft"):
            row[model] = ""
            if model in preds:
                y, p = preds[model]["label"].to_numpy(), preds[model]["pred"].to_numpy()
                lo, hi = evaluate.bootstrap_ci(y, p, evaluate._accuracy, bootstrap, seed)
                row[model] = f"{(y == p).mean():.1%} [{lo:.1%}–{hi:.1%}] on {len(y):,}"
        ab = _table(run, "ablation")
        hit = ab[ab["comparison"] == TARGET] if ab is not None else pd.DataFrame()
        row[f"{TARGET} (the loop's target)"] = (
            f"{hit['delta_accuracy'].iloc[0]:+.1%} [{hit['delta_lo'].iloc[0]:+.1%}, {hit['delta_hi'].iloc[0]:+.1%}]"
            + (" above" if hit["delta_lo"].iloc[0] > 0 else "")
            if len(hit)
            else ""
        )
        rows.append(row)
    return pd.DataFrame(rows)


SLOT_MODELS = ("tagger: seeds_only", "tagger: seeds_synthetic", "causal: sft")
SLOT_TARGET = "tagger: seeds_synthetic − tagger: seeds_only"


def _slot_f1_columns(run: Path, row: dict) -> None:
    """A structured run's overview cells: slot F1 [95% CI] of the seeds-only and kept-synthetic
    taggers and the SFT student on the real test rows, and 06's paired difference of the taggers."""
    m = _json(Path(run) / "metrics.json").get("06_evaluate", {})
    table = {r["model"]: r for r in m.get("table") or []}
    for model in SLOT_MODELS:
        r = table.get(model)
        row[f"{model} slot F1"] = (
            f"{r['slot_f1']:.3f} [{r['slot_f1_lo']:.3f}–{r['slot_f1_hi']:.3f}] on {r['test_rows']:,}" if r else ""
        )
    hit = [a for a in m.get("ablation") or [] if a.get("comparison") == SLOT_TARGET]
    row[f"{SLOT_TARGET} (the loop's target)"] = (
        f"{hit[0]['slot_f1_delta']:+.3f} [{hit[0]['lo']:+.3f}, {hit[0]['hi']:+.3f}]"
        + (" above" if hit[0]["lo"] > 0 else "")
        if hit
        else ""
    )


def patch_of(run: Path) -> pd.DataFrame:
    """The edits that made `run` from its parent (from its provenance)."""
    edits = (_json(Path(run) / "provenance.json").get("patch") or {}).get("edits", [])
    cols = ["id", "kind", "label", "path", "value", "evidence"]
    return pd.DataFrame([{k: _short(e.get(k), 300) for k in cols} for e in edits], columns=cols)


def _pct(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    def fmt(v, signed: bool) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        return f"{v:+.1%}" if signed else f"{v:.1%}"

    out = df.copy()
    for c in cols:
        if c in out:
            out[c] = [fmt(v, c.startswith("change")) for v in out[c]]
    return out


def _html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, border=0, classes="t", na_rep="")


def write_index(task_dir: Path) -> Path:
    """runs/<task>/index.html: every run of the task, and for each run with a parent the patch and
    the config, data, evaluation and cluster diffs against it. All text is HTML-escaped."""
    task_dir = Path(task_dir)
    runs = task_runs(task_dir)
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{html.escape(task_dir.name)}: iterations</title>",
        "<style>body{font-family:sans-serif;margin:24px;max-width:1300px}"
        ".t{border-collapse:collapse;font-size:13px;margin:8px 0 20px}.t td,.t th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:left;vertical-align:top}h2{margin-top:36px}</style>",
        f"<h1>{html.escape(task_dir.name)}: iterations</h1>",
        "<p>Each run is one iteration; an iteration with a parent was made by <code>workbench iterate</code> "
        "from the parent's failure clusters (07_gaps). Accuracy (slot F1 for extraction and tools) on the real "
        "test split with 95% bootstrap intervals; changes are paired on the same test rows.</p>",
    ]
    ov = overview(runs)
    if len(ov):
        ov["run"] = [f"<a href='{html.escape(r)}/report.html'>{html.escape(r)}</a>" for r in ov["run"]]
        for col in ("dev accuracy", "dev slot F1"):
            if col in ov:
                ov[col] = ov[col].map(lambda v: f"{v:.1%}" if isinstance(v, float) and not np.isnan(v) else "")
        body = ov.to_html(index=False, escape=False, border=0, classes="t", na_rep="",
                          formatters={c: (lambda v: html.escape(str(v))) for c in ov.columns if c != "run"})  # fmt: skip
        parts.append(body)
    for run in runs:
        parent = _json(run / "provenance.json").get("parent")
        if not parent or not (task_dir / parent).is_dir():
            continue
        a = task_dir / parent
        parts.append(f"<h2>{html.escape(parent)} → {html.escape(run.name)}</h2>")
        patch = patch_of(run)
        parts += [
            f"<details><summary><b>Patch that linked them: {len(patch)} edits</b> (click to open)</summary>",
            _html_table(patch),
            "</details>",
        ]
        parts += ["<h3>Config diff</h3>", _html_table(config_diff(a, run))]
        stats, per = data_diff(a, run)
        parts += ["<h3>Data statistics</h3>", _html_table(stats.map(_fmt))]
        changed = per[per["change"] != 0]
        parts += [f"<h3>Kept rows per label (the {len(changed)} that changed)</h3>", _html_table(changed)]
        ev = _pct(eval_diff(a, run), ["before", "before_lo", "before_hi", "after", "after_lo", "after_hi",
                                      "change", "change_lo", "change_hi"])  # fmt: skip
        parts += ["<h3>Evaluation on the real test split, paired on the same rows (accuracy; tool calls and "
                  "extraction: exact match of the whole answer)</h3>", _html_table(ev)]  # fmt: skip
        wins = win_diff(a, run)
        if len(wins):  # replies and summaries: each student against the untuned model
            parts += ["<h3>Win-rate against the untuned model, paired on the same test inputs</h3>",
                      _html_table(_pct(wins, ["before", "after", "change", "change_lo", "change_hi"]))]  # fmt: skip
        pl = per_label_diff(a, run)
        pl = pl[pl["change"] != 0]
        parts += [f"<h3>Per-label accuracy, {MAIN_MODEL} (labels that changed)</h3>",
                  _html_table(_pct(pl, ["before", "after", "change"]))]  # fmt: skip
        parts += ["<h3>Failure clusters of the parent: shrank or grew (dev failures of the same kind)</h3>",
                  _html_table(cluster_diff(a, run))]  # fmt: skip
    out = task_dir / "index.html"

    write_atomic(out, "\n".join(parts))
    return out


def _fmt(v):
    if isinstance(v, float) and not np.isnan(v):
        return f"{v:.3f}" if abs(v) < 1 else f"{v:,.0f}"
    return v
