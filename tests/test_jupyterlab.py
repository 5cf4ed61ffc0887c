"""The pages as their users use them: JupyterLab in headless Chromium on 127.0.0.1.

00_task: Run All on the smoke config (its model the tiny one: the page, the form and the estimate
are what is tested, not the model's words), then the form's buttons. An untouched form saves
nothing (the config stays byte for byte); after one edit the diff is on the page before anything is
written; the page shows no INFO line and no warning twice; the stage ran in the config's project,
not in the checkout.

02_responses and 07_gaps, for a classification run and a tool-call run (a copy of the session's
run, opened from its folder as 07's saved page tells a user to): 02's live view counts the
candidates as they arrive, and 07's checkboxes choose the edits whose next config and command the
button shows."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from support import CHROMIUM, KEY, KEY_ENV, QUIET_S, free_port, need_browser, wait_for_http

pytestmark = pytest.mark.slow


def wait_for_output(page, text: str, quiet_s: float = QUIET_S) -> None:
    """Wait until an output of the notebook shows `text`, as long as the notebook makes progress
    (its outputs change: progress bars, tables), however slow the machine; fail after `quiet_s`
    seconds without a change."""
    outputs = page.locator(".jp-OutputArea-output")
    raised = page.locator(".jp-OutputArea-output", has_text=re.compile(r"^\w+(Error|Exception): ", re.M))
    last, seen = time.monotonic(), None
    while not page.locator(".jp-OutputArea-output", has_text=text).count():
        if raised.count():  # a cell raised: the page will not get there
            raise AssertionError(f"a cell raised before {text!r}:\n{raised.first.inner_text()[-2000:]}")
        now = outputs.all_inner_texts()
        if now != seen:
            last, seen = time.monotonic(), now
        elif time.monotonic() - last > quiet_s:
            raise AssertionError(f"no output changed for {quiet_s:g} s before {text!r}")
        page.wait_for_timeout(2000)


@contextmanager
def jupyterlab(root_dir: Path, tmp_path: Path, **env_more: str):
    """JupyterLab serving `root_dir` on 127.0.0.1 (every cell rendered, no news prompt), in a
    person's session (no WORKBENCH_BATCH: widgets, not the driver's static pages); yields its base
    URL and token."""
    port, token = free_port(), "workbench-test"
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)  # every cell rendered, not only those in view: the test reads the whole page
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    (settings.parent / "apputils-extension").mkdir()  # no "Jupyter news?" prompt over the page
    (settings.parent / "apputils-extension" / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = dict(
        os.environ,
        JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
        **env_more,
    )
    env.pop("WORKBENCH_BATCH", None)
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}", "--ServerApp.port_retries=0", "--allow-root"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/api/status?token={token}", server, tmp_path / "lab.log")
        yield base, token
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def run_all(page, url: str) -> None:
    """Open the notebook at `url` and Run All once its kernel is idle."""
    page.goto(url)
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    page.locator(".jp-Notebook:visible").first.click()
    page.locator("#jp-main-statusbar").get_by_text(re.compile(r"\|\s*Idle")).wait_for(timeout=120_000)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()


@pytest.fixture
def lab(root, tmp_path, tiny):
    """A project outside the checkout (notebooks/ and configs/, as a user who copied them has)
    served by JupyterLab; yields (base URL with token, project folder)."""
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "configs").mkdir()
    shutil.copy(root / "notebooks" / "00_task.ipynb", project / "notebooks")
    smoke = (root / "configs" / "smoke.yaml").read_text()
    local = "  provider: local          # the embedded SmolLM2-135M-Instruct\n"
    assert local in smoke
    (project / "configs" / "smoke.yaml").write_text(smoke.replace(local, f"{local}  model: {tiny}\n"))
    with jupyterlab(project, tmp_path) as (base, token):
        yield f"{base}/lab/tree/notebooks/00_task.ipynb?token={token}", project


def test_the_form_round_trips_the_config_and_shows_the_diff_before_saving(lab, root, tmp_path):
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    url, project = lab
    config = project / "configs" / "smoke.yaml"
    original = config.read_bytes()
    checkout_scratch = root / "runs" / "smoke" / "scratch"
    before = checkout_scratch.stat().st_mtime_ns if checkout_scratch.exists() else None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        run_all(page, url)
        page.screenshot(path=str(tmp_path / "00_run_all.png"))
        try:
            wait_for_output(page, "took / estimated")
        except Exception:
            page.screenshot(path=str(tmp_path / "00_timeout.png"), full_page=True)
            raise
        page.screenshot(path=str(tmp_path / "00_after_run_all.png"), full_page=False)

        form = page.locator(".widget-vbox", has=page.get_by_role("button", name="Review and save…")).last
        form.get_by_role("button", name="Preview 3 per label").click()
        form.locator(".jp-OutputArea-output table").first.wait_for(timeout=120_000)  # the preview's rows
        expect(form).not_to_contain_text(re.compile(r"(^|\n)invalid: "))  # a config error (the rows are random words)
        form.get_by_role("button", name="Review and save…").click()
        expect(form).to_contain_text("no change", timeout=30_000)
        assert config.read_bytes() == original  # untouched: not a byte written

        rows = form.locator(".widget-inline-hbox", has_text="rows per label").locator("input")
        rows.fill("7")
        rows.press("Enter")
        form.get_by_role("button", name="Review and save…").click()
        expect(form).to_contain_text("+  rows_per_label: 7", timeout=30_000)
        expect(form).to_contain_text("-  rows_per_label: 6")
        assert config.read_bytes() == original  # the diff is shown; nothing is written yet
        page.screenshot(path=str(tmp_path / "00_diff.png"), full_page=False)
        form.get_by_role("button", name="Save to smoke.yaml").click()
        expect(form).to_contain_text(f"saved {config}", timeout=30_000)

        stderr = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
        blocks = [stderr.nth(i).inner_text() for i in range(stderr.count())]
        browser.close()
    changed = [(a, b) for a, b in zip(original.decode().splitlines(), config.read_text().splitlines()) if a != b]
    assert changed == [("  rows_per_label: 6", "  rows_per_label: 7")]
    assert len(original.decode().splitlines()) == len(config.read_text().splitlines())
    lines = [x for b in blocks for x in b.splitlines() if x.strip()]
    assert not [x for x in lines if re.search(r"\bINFO\b", x)], lines
    assert len(lines) == len(set(lines)), f"a warning shown twice: {lines}"
    scratch = project / "runs" / "smoke" / "scratch"
    assert (scratch / "logs" / "00_task.log").is_file() and (scratch / "artifacts" / "estimate.parquet").is_file()
    estimate = pd.read_parquet(scratch / "artifacts" / "estimate.parquet").set_index("stage")
    basis = estimate.loc["01_prompts", "time_basis"]
    assert "calibration" in basis or "took" in basis
    assert estimate.loc["01_prompts", "seconds"] > 0  # the local model was timed on this machine
    after = checkout_scratch.stat().st_mtime_ns if checkout_scratch.exists() else None
    assert after == before, "the notebook wrote into the checkout's runs/"


def copy_of(run: Path, into: Path) -> Path:
    """A copy of a finished run whose saved notebooks name the copy (papermill's parameters), as if
    the run had been made there, their outputs cleared (what the page shows is then this session's)."""
    import nbformat

    copy = into / run.parent.name / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("causal"))  # 07 reads the probes, not the LM
    for path in (copy / "notebooks").glob("*.ipynb"):
        nb = nbformat.reads(path.read_text().replace(json.dumps(str(run))[1:-1], json.dumps(str(copy))[1:-1]), 4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, path)
    return copy


@pytest.mark.parametrize("kind", ["classification", "tools"])
def test_02s_live_view_and_07s_review_in_jupyterlab(kind, request, tmp_path):
    """02 counts its candidates live as they arrive (all from the run's cache here), and 07's
    checkboxes pick the edits: unticking the first leaves the others in the command the button shows,
    with the config's changed fields. conftest.TYPE_RUNS runs this where the run is made."""
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    made = request.getfixturevalue("smoke_run" if kind == "classification" else "tools_run")
    run, cache = (made.run, made.cache) if kind == "classification" else (made[0], made[0].parents[2] / "cache")
    copy = copy_of(run, tmp_path / "project")
    edits = pd.read_parquet(copy / "artifacts" / "edits.parquet")
    assert len(edits) >= 2, "the run proposed fewer than two edits: nothing to choose between"
    cands = pd.read_parquet(copy / "artifacts" / "candidates.parquet")
    total = int((cands["source"] == "model").sum())
    env = {KEY_ENV: KEY, "WORKBENCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    with jupyterlab(tmp_path / "project", tmp_path, **env) as (base, token), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        where = f"{base}/lab/tree/{copy.parent.name}/{copy.name}/notebooks"
        run_all(page, f"{where}/02_responses.ipynb?token={token}")
        try:
            wait_for_output(page, "took / estimated")
        except Exception:
            page.screenshot(path=str(tmp_path / "02_timeout.png"), full_page=True)
            raise
        live = page.locator(".jp-OutputArea-output", has_text=re.compile(r"\d+ / \d+ candidates")).first
        expect(live).to_contain_text(f"{total} / {total} candidates")
        expect(live).to_contain_text(f"{total} from cache")
        page.screenshot(path=str(tmp_path / "02_live.png"), full_page=False)

        page.close()  # 07 in a page of its own, the workspace reset: 02's tab is not restored beside it
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        run_all(page, f"{where}/07_gaps.ipynb?reset&token={token}")
        try:
            wait_for_output(page, "edits proposed")
            page.get_by_role("button", name="Preview next config").wait_for(timeout=60_000)
        except Exception:
            page.screenshot(path=str(tmp_path / "07_timeout.png"), full_page=True)
            raise
        review = page.locator(".widget-vbox", has=page.get_by_role("button", name="Preview next config")).last
        boxes = review.locator("input[type=checkbox]")
        assert boxes.count() == len(edits)
        boxes.first.uncheck()
        review.get_by_role("button", name="Preview next config").click()
        rest = ",".join(edits["id"][1:])
        expect(review).to_contain_text(f"--accept {rest}", timeout=60_000)
        expect(review).to_contain_text("field")  # the config's changed fields, as a table
        page.screenshot(path=str(tmp_path / "07_review.png"), full_page=False)
        browser.close()
