"""What a run leaves to be shared: the session's smoke run (conftest.py), a whole run against the
simulated endpoint (benchmarks/simserver.py with plausible replies), its API key planted in the
environment and hostile text (a script tag, an image with onerror, a javascript: link, an email
address and a phone number) injected into a third of the generated messages.

- Secrets: the key is in no file of the run folder, the cache or the command's output.
- Inert reports: every page of the report, opened in headless Chromium, runs none of the injected
  script, has no javascript: link and no element with the injected handler, and shows no raw PII.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import EMAIL, HOSTILE, KEY, KEY_ENV, browse, browser_requests, need_browser, remote_references

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_the_api_key_is_in_no_file_of_the_run_nor_the_cache_nor_the_output(smoke_run):
    run, cache = smoke_run.run, smoke_run.cache
    needles = [KEY.encode(), KEY[3:].encode(), KEY[-16:].encode()]
    files = [p for p in list(run.rglob("*")) + list(cache.glob("*")) if p.is_file() and not p.is_symlink()]
    assert len(files) > 40  # notebooks, artifacts, report pages, provenance, the call cache
    leaks = [str(p) for p in files if any(n in p.read_bytes() for n in needles)]
    assert leaks == []
    assert KEY not in smoke_run.output
    # what is recorded is the variable's name, where the config says it
    assert f"api_key_env: {KEY_ENV}" in (run / "config.yaml").read_text()
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["status"] == "finished" and f"llm.api_key_env={KEY_ENV}" in prov["overrides"]


@pytest.mark.slow
def test_the_command_counts_the_llm_calls_of_each_stage(smoke_run):
    metrics = json.loads((smoke_run.run / "metrics.json").read_text())
    llm = {s: v["llm"] for s, v in metrics.items() if isinstance(v, dict) and "llm" in v}
    assert {"01_prompts", "02_responses", "03_judge"} <= set(llm), metrics
    assert all(c["calls"] > 0 for c in llm.values()), llm
    total = {k: sum(c[k] for c in llm.values()) for k in ("calls", "cached", "errors")}
    line = f"LLM calls:  {total['calls']}, answered from the cache {total['cached']}, failed {total['errors']}"
    assert line in smoke_run.output


@pytest.mark.slow
def test_hostile_rows_reached_the_data_and_the_reject_pile(smoke_run):
    import pandas as pd

    rows = pd.read_parquet(smoke_run.run / "artifacts" / "dataset.parquet")
    hostile = rows[rows["text"].str.contains("onerror", regex=False)]
    assert len(hostile) and (~hostile["keep"]).any()  # the test is about something: rows to show, rejected ones too
    assert rows["keep"].any()


def _dom(page: Path, tmp: Path) -> str:
    out = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "<body" in out.stdout, out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow
def test_every_page_of_the_run_is_offline_and_inert_and_shows_no_raw_pii(smoke_run):
    """Every page of the run (the report, each stage's page, the task's iterations page): no remote
    address in any script, link, image or frame, nor in inline script code, and no raw PII in its
    source; then, each opened in headless Chromium with the network cut, it asks for nothing
    remote, runs none of the injected script, and has no javascript: link and no element with the
    injected handler."""
    run = smoke_run.run
    pages = [run / "report.html", *sorted((run / "report").glob("*.html")), smoke_run.runs_dir / "smoke" / "index.html"]
    assert len(pages) >= 11
    for page in pages:
        source = page.read_text()
        assert remote_references(source) == [], page.name
        assert EMAIL not in source and "7700 900123" not in source, f"raw PII in {page.name}"
    need_browser()
    seen = browse(pages)
    assert len(seen) == len(pages)
    for name, got in seen.items():
        assert got["requests"] == [], (name, got["requests"])
        assert "PWNED" not in got["title"], f"a script ran in {name}: {got['title']}"
        # elements, not text: the injected tags may be on the pages only as escaped text
        assert not re.search(r"<a\b[^>]*href=\"javascript:", got["dom"], re.I), f"a javascript: link in {name}"
        assert not re.search(r"<img\b[^>]*onerror", got["dom"], re.I), f"an onerror handler in {name}"
    # the injected text is on the pages as text: escaped in the HTML the reader sees
    report = (run / "report" / "01_prompts.html").read_text() + (run / "report" / "04_filter.html").read_text()
    assert "&lt;script&gt;" in report or "\\u003cscript\\u003e" in report


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package chromium)")
def test_markdown_styler_and_table_outputs_built_from_data_are_inert(tmp_path, monkeypatch):
    """The three ways a stage shows data on a page, each fed the hostile text: Markdown from an
    f-string (nbconvert passes HTML in Markdown through unless told), a Styler with a format
    (pandas resets its escaping), and a plain DataFrame. The page runs none of it and shows no PII."""
    import nbformat
    import papermill

    from workbench import report, runs

    run = runs.new_run(ROOT / "configs" / "smoke.yaml", runs_root=tmp_path)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('config = ""\nrun_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "import pandas as pd\nfrom IPython.display import Markdown, display\n"
            "from workbench.stage import open_stage\nstage = open_stage(config, run_dir, '00_task')\n"
            f"hostile = {HOSTILE!r}"
        ),
        # a cluster name (generated, not a row: its HTML is the risk; rows reach pages through tables)
        nbformat.v4.new_code_cell("display(Markdown(f\"**Cluster:** {hostile.split(' write to')[0]}\"))"),
        nbformat.v4.new_code_cell(
            'pd.DataFrame({"name": [hostile], "score": [0.5]}).style.format({"score": "{:.1%}"})'
        ),
        nbformat.v4.new_code_cell('pd.DataFrame({"id": ["r1"], "text": [hostile]})'),
    ]
    (run / "notebooks").mkdir()
    src = tmp_path / "00_task.ipynb"
    nbformat.write(nb, src)
    papermill.execute_notebook(
        str(src),
        str(run / "notebooks" / "00_task.ipynb"),
        parameters={"config": str(ROOT / "configs" / "smoke.yaml"), "run_dir": str(run)},
        kernel_name="python3",
        progress_bar=False,  # fmt: skip
    )
    report.export_html(run)
    page = run / "report" / "00_task.html"
    source = page.read_text()
    assert EMAIL not in source and "7700 900123" not in source  # PII shown redacted
    dom = _dom(page, tmp_path / "profile")
    assert not any("PWNED" in t for t in re.findall(r"<title>([^<]*)</title>", dom))
    assert not re.search(r"<a\b[^>]*href=\"javascript:", dom, re.I)
    assert not re.search(r"<img\b[^>]*onerror", dom, re.I)
    assert dom.count("&lt;script&gt;document.title") >= 3  # all three outputs show it, as text


def test_pages_with_widgets_and_mermaid_come_out_with_nothing_remote(tmp_path):
    """A notebook that showed ipywidgets (their saved state makes nbconvert add the unpkg.com
    widget manager) and Markdown with a mermaid block (the lab template imports mermaid from
    cdnjs): its page names no remote address, and Chromium, network cut, asks for nothing.
    The same check catches a page that does (a control)."""
    import nbformat
    from nbconvert import HTMLExporter

    from workbench.report import _without_widgets, offline

    nb = nbformat.v4.new_notebook()
    view = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    nb.cells = [
        nbformat.v4.new_markdown_cell("```mermaid\ngraph LR; a-->b\n```"),
        nbformat.v4.new_code_cell(
            "w",
            outputs=[
                nbformat.v4.new_output(
                    "display_data", {"application/vnd.jupyter.widget-view+json": view, "text/plain": "HBox()"}
                )
            ],
        ),  # fmt: skip
    ]
    nb.metadata["widgets"] = {
        "application/vnd.jupyter.widget-state+json": {"state": {"abc": {"model_name": "HTMLModel"}}, "version_major": 2, "version_minor": 0}
    }  # fmt: skip
    raw, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.from_dict(nb))
    assert remote_references(raw)  # the control: nbconvert's own page reaches out
    page = tmp_path / "page.html"
    page.write_text(offline(HTMLExporter(template_name="lab").from_notebook_node(_without_widgets(nb))[0]))
    assert remote_references(page.read_text()) == []
    need_browser()
    bad = tmp_path / "bad.html"
    bad.write_text(raw)
    asked = browser_requests([page, bad])
    assert asked[f"{tmp_path.name}/page.html"] == [] and asked[f"{tmp_path.name}/bad.html"], asked
