"""Figures for the notebooks and the report, and `show`, which makes them render offline.

`show(fig)` emits the figure twice in one output: as Plotly JSON (JupyterLab's renderer draws it
interactively) and as HTML whose first figure in a kernel carries plotly.js inline, so the
nbconvert export of the executed notebook draws every figure with no network.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from IPython.display import display
from plotly.subplots import make_subplots

from workbench.tables import cell_text, funnel_table, reject_counts, shown

_plotlyjs_sent = False


def show(fig: go.Figure) -> None:
    global _plotlyjs_sent
    html = fig.to_html(full_html=False, include_plotlyjs=not _plotlyjs_sent, config={"displaylogo": False})
    _plotlyjs_sent = True
    display({"application/vnd.plotly.v1+json": fig.to_plotly_json(), "text/html": html}, raw=True)


def funnel(rows: pd.DataFrame) -> go.Figure:
    t = funnel_table(rows)
    fig = go.Figure(go.Funnel(y=t["stage"], x=t["rows"], textinfo="value+percent initial"))
    return fig.update_layout(title="Funnel: generated → kept", height=300 + 30 * len(t))


def reject_pile(rows: pd.DataFrame) -> go.Figure:
    counts = reject_counts(rows)
    fig = px.bar(
        counts,
        x="rows",
        y="reject_reason",
        color="reject_stage",
        orientation="h",
        title=f"Reject pile by reason ({int((~rows['keep']).sum())} of {len(rows)} rows)",
    )
    return fig.update_layout(height=260 + 25 * len(counts), yaxis_title=None)


GROUP_COLOURS = {"baseline": "#9e9e9e", "synthetic": "#1f77b4", "reference": "#2ca02c"}


def _interval_bars(frame: pd.DataFrame, col: str, colours: list[str], fmt: str, hover=None) -> go.Figure:
    """One bar per model of `frame[col]`, with its 95% interval from `<col>_lo`/`<col>_hi` columns
    (`lo`/`hi` named by the column's prefix, e.g. refusal_rate → refusal_lo)."""
    stem = col.removesuffix("_rate")
    lo, hi = frame[f"{stem}_lo"], frame[f"{stem}_hi"]
    return go.Figure(
        go.Bar(
            x=frame["model"],
            y=frame[col],
            marker_color=colours,
            error_y=dict(type="data", symmetric=False, array=hi - frame[col], arrayminus=frame[col] - lo),
            text=[format(v, fmt) for v in frame[col]],
            textposition="outside",
            hovertext=hover,
        )
    )


def accuracy(table: pd.DataFrame) -> go.Figure:
    """Accuracy with 95% bootstrap intervals, one bar per model, coloured by group (baseline,
    synthetic, reference) when the table has one."""
    groups = table["group"] if "group" in table else pd.Series("synthetic", index=table.index)
    colours = [GROUP_COLOURS.get(g, "#1f77b4") for g in groups]
    fig = _interval_bars(table, "accuracy", colours, ".1%", table["trained_on"] if "trained_on" in table else None)
    rows = int(table["test_rows"].iloc[0]) if "test_rows" in table and len(table) else 0
    return fig.update_layout(
        title=f"Accuracy on {rows:,} real test rows (95% bootstrap CI; grey baseline, blue synthetic, green reference)",
        yaxis_tickformat=".0%",
        yaxis_range=[0, 1.05],
        height=440,
    )


def slot_f1(table: pd.DataFrame) -> go.Figure:
    """Structured tasks: slot F1 with 95% bootstrap intervals, one bar per model, coloured by group."""
    colours = [GROUP_COLOURS.get(g, "#1f77b4") for g in table["group"]]
    hover = [f"{r.test_rows} test rows, {r.train_rows} train rows" for r in table.itertuples()]
    return _interval_bars(table, "slot_f1", colours, ".3f", hover).update_layout(
        title="Slot F1 on the real test rows (95% bootstrap CI; grey baseline, blue synthetic, green reference)",
        yaxis_range=[0, 1.05],
        height=440,
    )


def training_curves(curves: pd.DataFrame) -> go.Figure:
    """Loss per logged step of each causal model, and reward (GRPO) or reward margin (DPO) beside it."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss", "reward (GRPO) / reward margin (DPO)"))
    for i, (name, g) in enumerate(curves.groupby("model", sort=False)):
        colour = px.colors.qualitative.Plotly[i % 10]
        for col, c in (("loss", 1), ("reward", 2)):
            h = g.dropna(subset=[col])
            if len(h):
                fig.add_trace(
                    go.Scatter(x=h["step"], y=h[col], name=name, legendgroup=name, showlegend=c == 1 or "loss" not in g,
                               line_color=colour, mode="lines+markers"),
                    row=1, col=c,
                )  # fmt: skip
    return fig.update_layout(height=360, title="Causal student: training curves").update_xaxes(title="step")


def safety(summary: pd.DataFrame) -> go.Figure:
    """Refusal rate on harmful instructions per causal model (95% CI); a drop against the untuned
    model is red."""
    colours = [
        "#d62728" if f == "red" else "#1f77b4"
        for f in summary.get("flag", pd.Series("", index=summary.index)).fillna("")
    ]
    fig = _interval_bars(summary, "refusal_rate", colours, ".0%")
    n = int(summary["prompts"].iloc[0]) if len(summary) else 0
    return fig.update_layout(
        title=f"Refusal rate on {n} AdvBench harmful instructions (95% CI; red = lower than the untuned model)",
        yaxis_tickformat=".0%",
        yaxis_range=[0, 1.05],
        height=380,
    )


def contamination(rows: pd.DataFrame) -> go.Figure:
    """Each checked row's cosine similarity to its nearest real test row (MiniLM), by source."""
    return px.histogram(
        rows, x="nearest_test_cosine", color="source", nbins=40, opacity=0.7, barmode="overlay",
        histnorm="probability", title="Nearest real test row: cosine similarity (MiniLM), synthetic vs real seeds",
    ).update_layout(height=320, xaxis_title="cosine to the nearest test row")  # fmt: skip


def histogram(rows: pd.DataFrame, column: str, title: str, color: str | None = None) -> go.Figure:
    return px.histogram(rows.dropna(subset=[column]), x=column, color=color, title=title, nbins=30).update_layout(
        height=320
    )


def _sources(clustered: pd.DataFrame) -> str:
    """'28 dev, 30 low_judge': how many failures each source gave ('dev' when none is named)."""
    if "source" not in clustered:
        return f"{len(clustered)} dev"
    return ", ".join(f"{n} {k}" for k, n in clustered["source"].value_counts().items())


def cluster_map(clustered: pd.DataFrame) -> go.Figure:
    """The failures' 2-D map coloured by cluster; noise (-1) in grey; hover shows the text."""
    df = clustered.assign(
        cluster=clustered["cluster"].map(lambda c: "noise" if c == -1 else f"cluster {c}"),
        hover=clustered["text"].map(lambda t: shown(t, 120)),
    )
    fig = px.scatter(
        df,
        x="x",
        y="y",
        color="cluster",
        hover_name="hover",
        hover_data={"label": True, "predicted": True, "x": False, "y": False},
        color_discrete_map={"noise": "lightgrey"},
        title=f"Failure clusters ({len(df)} failures: {_sources(clustered)})",
    )
    return fig.update_layout(height=500)


def coverage_heatmap(cells: pd.DataFrame) -> go.Figure:
    """Kept against target per label × difficulty: colour is kept/target, text is `kept/target`."""
    order = [c for c in ["easy", "medium", "hard", "all"] if c in set(cells["difficulty"])]
    z = cells.pivot(index="label", columns="difficulty", values="kept")[order]
    t = cells.pivot(index="label", columns="difficulty", values="target")[order]
    ratio = (z / t.where(t > 0)).clip(upper=1)
    text = z.astype(int).astype(str) + "/" + t.astype(int).astype(str)
    fig = go.Figure(
        go.Heatmap(
            z=ratio.values,
            x=order,
            y=list(ratio.index),
            text=text.values,
            texttemplate="%{text}",
            colorscale="RdYlGn",
            zmin=0,
            zmax=1,
            colorbar=dict(title="kept/target"),
        )
    )
    short = int((cells["kept"] < cells["target"]).sum())
    return fig.update_layout(
        title=f"Coverage of the grid: kept/target per cell ({short} of {len(cells)} cells short)",
        height=220 + 16 * len(ratio),
        yaxis=dict(autorange="reversed", dtick=1),
    )


def defect_rate(table: pd.DataFrame) -> go.Figure:
    """Defect rate per generation round, bars stacked by defect."""
    kinds = [c[2:] for c in table.columns if c.startswith("n_")]
    fig = go.Figure(
        [go.Bar(x=table["round"], y=table[f"n_{k}"] / table["generated"], name=k) for k in kinds],
    )
    fig.add_trace(
        go.Scatter(
            x=table["round"],
            y=table["defect_rate"],
            mode="lines+markers+text",
            text=[f"{r:.0%} of {n}" for r, n in zip(table["defect_rate"], table["generated"])],
            textposition="top center",
            name="defect rate",
        )
    )
    return fig.update_layout(
        barmode="stack",
        title="Defect rate per batch (round k+1's instructions carry round k's defects)",
        xaxis=dict(title="round", dtick=1),
        yaxis=dict(tickformat=".0%", range=[0, 1.1]),
        height=380,
    )


def reject_table(
    rows: pd.DataFrame, columns: list[str], by: str = "reject_reason_prompts", per: int = 200
) -> go.Figure:
    """The reject pile as a table with a drop-down per reason (works in the offline HTML report):
    up to `per` example rows for each reason."""
    rej = rows[rows[by].notna()]
    reasons = rej[by].value_counts()
    fig = go.Figure()
    for k, reason in enumerate(reasons.index):
        part = rej[rej[by] == reason].head(per)
        fig.add_trace(
            go.Table(
                header=dict(values=columns, align="left"),
                cells=dict(values=[[cell_text(v) for v in part[c]] for c in columns], align="left"),
                columnwidth=[3 if c == "text" else 1 for c in columns],
                visible=k == 0,
            )
        )
    buttons = [
        dict(
            label=f"{reason} ({n})",
            method="update",
            args=[{"visible": [j == k for j in range(len(reasons))]}],
        )
        for k, (reason, n) in enumerate(reasons.items())
    ]
    return fig.update_layout(
        updatemenus=[dict(buttons=buttons, x=0, y=1.12, xanchor="left", yanchor="top")],
        title=dict(text=f"Reject pile: {len(rej)} rows, pick a reason", x=0.35),
        height=520,
        margin=dict(t=90),
    )


def arrivals(cands: pd.DataFrame) -> go.Figure:
    """Candidate rows done over time (fresh calls only: cached rows arrive at once)."""
    fresh = cands[(cands["source"] == "model") & ~cands["cached"].astype(bool)].sort_values("arrived_s")
    fig = go.Figure(go.Scatter(x=fresh["arrived_s"], y=np.arange(1, len(fresh) + 1), mode="lines", name="rows done"))
    span = float(fresh["arrived_s"].max()) if len(fresh) else 0.0  # as responses.throughput reckons it
    tokens = int(fresh["completion_tokens"].fillna(0).sum())
    rate = f"{round(tokens / span, 1):.1f} tokens/s" if span > 0 else "all from cache"
    return fig.update_layout(
        title=f"Candidates arriving ({len(fresh)} fresh rows, {rate})",
        xaxis_title="seconds since the stage started",
        yaxis_title="rows done",
        height=320,
    )


def judge_scores(judgments: pd.DataFrame) -> go.Figure:
    """Distribution of rubric scores (0-1) per dimension."""
    fig = px.histogram(
        judgments.dropna(subset=["score"]), x="score", color="dimension", barmode="group", nbins=5,
        title=f"Judge scores by dimension ({judgments['score'].notna().sum()} of {len(judgments)} parsed)",
    )  # fmt: skip
    return fig.update_layout(height=340, xaxis=dict(tickvals=[0, 0.25, 0.5, 0.75, 1]))


def juror_agreement(table: pd.DataFrame) -> go.Figure:
    fig = px.bar(table, x="juror", y="agrees_with_intended", text="votes", title="Jurors naming the intended label")
    return fig.update_layout(height=320, yaxis=dict(tickformat=".0%", range=[0, 1]))
