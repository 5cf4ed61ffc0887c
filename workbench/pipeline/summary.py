"""What 99_report shows beside the stages' own tables: the run's header, the filter ablation,
the contamination line, the training table and the lineage against the parent run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from IPython.display import Markdown

from workbench import (
    lineage,
)
from workbench.stage import Stage

# ---------------------------------------------------------------- 99_report

ABLATION_STUDENTS = {
    "probe: seeds_only": "seeds only",
    "probe: seeds_unfiltered": "seeds + unfiltered synthetic",
    "probe: seeds_synthetic": "seeds + filtered synthetic",
}


def ablation_markdown(table: pd.DataFrame, ablation: pd.DataFrame) -> str:
    """99's filter ablation: each probe's accuracy with its interval, then each paired difference."""
    ab = table[table["model"].isin(ABLATION_STUDENTS)]
    lines = []
    if "accuracy" in ab and len(ab) == 3:
        lines.append(
            f"**Filter ablation** (accuracy on the table's {int(ab['test_rows'].iloc[0]):,} test rows, 95% CI): "
            + " · ".join(
                f"{ABLATION_STUDENTS[r.model]} {r.accuracy:.1%} [{r.accuracy_lo:.1%}–{r.accuracy_hi:.1%}], "
                f"{r.train_rows} rows"
                for r in ab.itertuples()
            )
        )
    lines += [
        f"- {r.comparison}: **{r.delta_accuracy:+.1%}** [{r.delta_lo:+.1%}, {r.delta_hi:+.1%}] "
        f"(paired bootstrap on the same {r.test_rows:,} test rows)"
        for r in ablation.itertuples()
    ]
    return "\n\n".join(lines)


def contamination_markdown(c: dict) -> str:
    return (
        f"**{c['synthetic_rows']} synthetic rows** against {c['test_rows']:,} real test rows: "
        f"**{c['exact']} exact**, **{c['near_duplicates']} near-duplicates**; nearest-test cosine median "
        f"{c['cosine_p50']:.2f}, p90 {c['cosine_p90']:.2f}, max {c['cosine_max']:.2f} "
        f"(real seeds: median {c.get('real_cosine_p50', float('nan')):.2f}, "
        f"p90 {c.get('real_cosine_p90', float('nan')):.2f})"
    )


def training_table(stage: Stage) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """99: the causal students' curves (None when 05 logged none) and 05's table without paths."""
    path = stage.artifacts / "training_curves.parquet"
    curves = stage.load("training_curves") if path.exists() else None
    return curves, stage.load("training").drop(columns=["path", "adapter", "merged", "curve"], errors="ignore")


def run_header_markdown(stage: Stage) -> str:
    cfg, prov = stage.cfg, stage.provenance()
    return (
        f"**Task:** {cfg.task.description} · **LLM:** {cfg.models_line()} · "
        f"**run:** {stage.run_dir.name} · **git:** {(prov.get('git') or {}).get('sha')}"
    )


def parent_of(stage: Stage) -> tuple[Path, list] | None:
    """The parent run of `stage`'s run and what every 99 shows first about it: the parent line with
    the accepted edits, the patch and the config diff. None for a first iteration."""
    prov = stage.provenance()
    parent = prov.get("parent")
    if not parent:
        return None
    a, b = stage.run_dir.parent / parent, stage.run_dir
    accepted = (prov.get("patch") or {}).get("accepted", [])
    line = Markdown(f"**Parent:** {parent} · edits accepted: {', '.join(accepted) or 'none recorded'}")
    return a, [line, lineage.patch_of(b), lineage.config_diff(a, b)]


def lineage_views(stage: Stage) -> list:
    """99's comparison with the parent iteration, as what to display in order: the patch, the
    config diff, the data statistics, the paired evaluation change, per-label and per-cluster
    changes. One line when the run has no parent."""
    cfg, found = stage.cfg, parent_of(stage)
    if found is None:
        return [Markdown("First iteration: no parent run.")]
    (a, head), b = found, stage.run_dir
    stats, per_label_rows = lineage.data_diff(a, b)
    diff = lineage.eval_diff(a, b, cfg.evaluate.bootstrap, cfg.seed)
    pct = [c for c in diff.columns if c.startswith(("before", "after", "change"))]
    diff_style = diff.style.format({c: "{:+.1%}" if c.startswith("change") else "{:.1%}" for c in pct})
    pl = lineage.per_label_diff(a, b)
    return [
        *head,
        stats,
        per_label_rows[per_label_rows["change"] != 0],
        diff_style.hide(axis="index"),
        pl[pl["change"] != 0].style.format({"before": "{:.0%}", "after": "{:.0%}", "change": "{:+.0%}"}),
        lineage.cluster_diff(a, b),
    ]
