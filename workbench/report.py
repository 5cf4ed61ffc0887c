"""The offline HTML report of a run: each executed notebook as a page with its code hidden and
Markdown HTML escaped, a navigation bar, report.html (the summary page) and report/index.html.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from jinja2 import pass_context
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

from workbench.files import read_json, write_atomic
from workbench.runs import STAGES


def export_html(run: Path) -> Path:
    """Each executed notebook → report/<stage>.html (code hidden); report.html joins the summary
    page (99_report) with links to every stage; index.html lists stages with their status."""
    run = Path(run)
    out = run / "report"
    out.mkdir(exist_ok=True)
    exporter = _inert_exporter_class()(
        template_name="lab", exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    )
    prov = read_json(run / "provenance.json")
    done = []
    for s in STAGES:
        nb = run / "notebooks" / f"{s}.ipynb"
        if nb.is_file():
            node = _without_widgets(nbformat.read(nb, as_version=4))
            body, _ = exporter.from_notebook_node(node, resources={"metadata": {"path": str(nb.parent)}})
            body = offline(body)
            write_atomic(out / f"{s}.html", _nav(body, s, run))
            if s == "99_report":  # the summary page, one level up, its links pointing into report/
                write_atomic(run / "report.html", _nav(body, s, run, prefix="report/"))
            done.append(s)
    rows = ""
    for s in STAGES:
        info = prov.get("stages", {}).get(s, {})
        name = f"<a href='{s}.html'>{s}</a>" if s in done else s
        seconds = info.get("seconds", "") if s in done else ""
        rows += f"<tr><td>{name}</td><td>{info.get('status', 'not run')}</td><td>{seconds}</td></tr>"
    index = (
        f"<!doctype html><meta charset='utf-8'><title>{run.name}</title>"
        f"<body style='font-family:sans-serif'><h1>Run {run.parent.name}/{run.name}</h1>"
        f"<p><a href='../report.html'>Summary report</a></p><table border=1 cellpadding=4>"
        f"<tr><th>stage</th><th>status</th><th>seconds</th></tr>{rows}</table></body>"
    )
    write_atomic(out / "index.html", index)
    return run / "report.html"


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _without_widgets(nb):
    """The notebook without ipywidgets' saved state: nbconvert would add a script fetching the
    widget manager from unpkg.com to show it. Under the driver no widget is drawn (files.batch_mode);
    this also covers notebooks run by hand in JupyterLab and copied into a run folder."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            data = o.get("data")
            if data and WIDGET_MIME in data:
                del data[WIDGET_MIME]
                if set(data) <= {"text/plain"}:  # "HBox(children=(…))" tells a reader nothing
                    data["text/plain"] = "(an interactive widget: open the notebook in JupyterLab)"
    return nb


_SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script>", re.S | re.I)
_URL = re.compile(r"https?://", re.I)
_ESCAPED = ":\\/\\/"  # "://" with JSON's optional escapes: "https:\/\/x" is the string "https://x"
# the XML namespaces plotly.js creates SVG with: identifiers, never fetched
NAMESPACES = re.compile(r"https?://www\.w3\.org/(?:1999/xhtml|1999/xlink|2000/svg|2000/xmlns/|XML/1998/namespace)")


def _plotly_bundle(code: str) -> bool:
    """plotly.js itself, inlined once per page by plots.show: pinned with the plotly package, it
    names map-tile and font servers that only map traces (never drawn here) would fetch."""
    return code.lstrip().startswith("/**") and "plotly.js v" in code[:400]


def offline(html: str) -> str:
    """The page with nothing that reaches the network: scripts with a remote `src`, inline scripts
    that name a remote address (nbconvert's lab template imports mermaid from cdnjs and MathJax
    and require.js from CDNs; no page here needs them), and remote stylesheets, fonts and frames.
    plotly's figure config names plot.ly for its unused "edit in Chart Studio" link: removed."""

    def script(m: re.Match) -> str:
        attrs, code = m.group(1), m.group(2)
        if _URL.search(attrs):
            return ""
        if _plotly_bundle(code):
            return m.group(0)
        code = re.sub(r'"plotlyServerURL":\s*"https?://[^"]*"', '"plotlyServerURL": ""', code)
        if "Plotly.newPlot(" in code:  # a figure: an address in its data is text (a label, hover text)
            code = code.replace("://", _ESCAPED)  # the same JS string, but no address in the code
            return f"<script{attrs}>{code}</script>"
        return "" if _URL.search(NAMESPACES.sub("", code)) else f"<script{attrs}>{code}</script>"

    html = _SCRIPT.sub(script, html)
    html = re.sub(r"<link\b[^>]*\bhref=[\"']https?://[^>]*>", "", html, flags=re.I)
    html = re.sub(r"<(iframe|img|source|embed)\b[^>]*\bsrc=[\"']https?://[^>]*>", "", html, flags=re.I)
    return re.sub(r"@import\s+url\([\"']?https?://[^)]*\);?", "", html, flags=re.I)


def _inert_exporter_class():
    class InertHTMLExporter(HTMLExporter):
        """nbconvert's HTML exporter with HTML in Markdown escaped: a stage that displays
        Markdown built from data (labels, cluster names, generated text) shows any tag in it as
        text; nbconvert passes raw HTML in Markdown through. Pandas tables escape their cells,
        Stylers are told to (open_stage), and plotly keeps its data out of the page's HTML."""

        @pass_context
        def markdown2html(self, context, source):
            cell = context.get("cell", {})
            renderer = IPythonRenderer(
                escape=True,
                attachments=cell.get("attachments", {}),
                embed_images=self.embed_images,
                path=context.get("resources", {}).get("metadata", {}).get("path", ""),
                anchor_link_text=self.anchor_link_text,
                exclude_anchor_links=self.exclude_anchor_links,
                **self.lexer_options,
            )
            return MarkdownWithMath(renderer=renderer).render(source)

    return InertHTMLExporter


def _nav(body: str, stage: str, run: Path, prefix: str = "") -> str:
    links = " · ".join(f"<a href='{prefix}{s}.html'>{s}</a>" if s != stage else f"<b>{s}</b>" for s in STAGES)
    bar = (
        f"<div style='font-family:sans-serif;padding:8px;border-bottom:1px solid #ccc'>"
        f"{run.parent.name}/{run.name} — <a href='{prefix}index.html'>index</a> · {links}</div>"
    )
    return re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + bar, body, count=1)


# ---------------------------------------------------------------- stage context for notebooks
