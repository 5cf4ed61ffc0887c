"""Figures for the notebooks and the report, and `show`, which makes them render offline.

`show(fig)` emits the figure twice in one output: as Plotly JSON (JupyterLab's renderer draws it
interactively) and as HTML whose first figure in a kernel carries plotly.js inline, so the
nbconvert export of the executed notebook draws every figure with no network.
"""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

_plotlyjs_sent = False


def show(fig: go.Figure) -> None:
    global _plotlyjs_sent
    from IPython.display import display

    html = fig.to_html(full_html=False, include_plotlyjs=not _plotlyjs_sent, config={"displaylogo": False})
    _plotlyjs_sent = True
    display({"application/vnd.plotly.v1+json": fig.to_plotly_json(), "text/html": html}, raw=True)


def funnel(rows: pd.DataFrame) -> go.Figure:
    """Rows alive after each stage, from generated to kept."""
    stages = [c[len("keep_") :] for c in rows.columns if c.startswith("keep_")]
    alive = pd.Series(True, index=rows.index)
    names, counts = ["generated"], [len(rows)]
    for s in stages:
        alive &= rows[f"keep_{s}"].astype(bool)
        names.append(f"after {s}")
        counts.append(int(alive.sum()))
    fig = go.Figure(go.Funnel(y=names, x=counts, textinfo="value+percent initial"))
    return fig.update_layout(title="Funnel: generated → kept", height=300 + 30 * len(names))


def reject_counts(rows: pd.DataFrame) -> pd.DataFrame:
    """Rejected rows by the stage and reason that first rejected them."""
    rej = rows[~rows["keep"]]
    return (
        rej.groupby(["reject_stage", "reject_reason"])
        .size()
        .rename("rows")
        .reset_index()
        .sort_values("rows", ascending=False)
    )


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


def accuracy(table: pd.DataFrame) -> go.Figure:
    """Accuracy with 95% bootstrap intervals, one bar per model."""
    fig = go.Figure(
        go.Bar(
            x=table["model"],
            y=table["accuracy"],
            error_y=dict(
                type="data",
                symmetric=False,
                array=table["accuracy_hi"] - table["accuracy"],
                arrayminus=table["accuracy"] - table["accuracy_lo"],
            ),
            text=[f"{a:.1%}" for a in table["accuracy"]],
            textposition="outside",
        )
    )
    return fig.update_layout(
        title="Accuracy on the real test split (95% bootstrap CI)",
        yaxis_tickformat=".0%",
        yaxis_range=[0, 1.05],
        height=420,
    )


def histogram(rows: pd.DataFrame, column: str, title: str, color: str | None = None) -> go.Figure:
    return px.histogram(rows.dropna(subset=[column]), x=column, color=color, title=title, nbins=30).update_layout(
        height=320
    )


def cluster_map(clustered: pd.DataFrame) -> go.Figure:
    """The failures' 2-D map coloured by cluster; noise (-1) in grey; hover shows the text."""
    df = clustered.assign(
        cluster=clustered["cluster"].map(lambda c: "noise" if c == -1 else f"cluster {c}"),
        hover=clustered["text"].str.slice(0, 120),
    )
    fig = px.scatter(
        df,
        x="x",
        y="y",
        color="cluster",
        hover_name="hover",
        hover_data={"label": True, "predicted": True, "x": False, "y": False},
        color_discrete_map={"noise": "lightgrey"},
        title=f"Failure clusters on the real dev split ({len(df)} misclassified rows)",
    )
    return fig.update_layout(height=500)
