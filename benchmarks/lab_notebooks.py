"""The smoke notebooks as a JupyterLab user runs them: each of 00 … 99 opened in JupyterLab
(headless Chromium through Playwright, on 127.0.0.1) and run with *Run All*, one after the other,
on a copy of notebooks/ and configs/smoke.yaml in a scratch project. Prints, per notebook, the
seconds from Run All to its last cell's output, and the table that cell shows: the stage's
estimate (00's, from this machine's calibration or earlier runs here) beside the time it took.

    .venv/bin/python benchmarks/lab_notebooks.py [--cache DIR] [--keep-llm-cache] [--out FILE]

`--cache` is the workbench cache to use (default: a fresh one under the scratch project, with
the converted models linked from ~/.cache/workbench/models, so LLM calls start from nothing);
throughput.json in it holds what earlier runs measured, which the estimates read.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["00_task", "01_prompts", "02_responses", "03_judge", "04_filter", "05_train", "06_evaluate", "07_gaps",
          "99_report"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="WORKBENCH_CACHE for the kernels (default: a fresh one)")
    ap.add_argument("--out", help="write the per-stage results as JSON here")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per notebook")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="lab-notebooks-"))
    project = tmp / "project"
    shutil.copytree(ROOT / "notebooks", project / "notebooks")
    (project / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "smoke.yaml", project / "configs")
    cache = Path(args.cache) if args.cache else tmp / "cache"
    if not args.cache:
        cache.mkdir()
        (cache / "models").symlink_to(Path.home() / ".cache" / "workbench" / "models")
    settings = tmp / "settings" / "@jupyterlab"
    (settings / "notebook-extension").mkdir(parents=True)
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    (settings / "apputils-extension").mkdir()
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = dict(os.environ, WORKBENCH_CACHE=str(cache), JUPYTER_RUNTIME_DIR=str(tmp / "rt"), HF_HUB_OFFLINE="1",
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / "ws"), JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"),
               JUPYTER_PREFER_ENV_PATH="1")  # fmt: skip
    env.pop("WORKBENCH_BATCH", None)
    port, token = free_port(), "bench"
    log = open(tmp / "lab.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={project}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    results = []
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            for stage in STAGES:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/lab/tree/notebooks/{stage}.ipynb?reset&token={token}")
                page.locator("#jp-main-statusbar").get_by_text(re.compile(r"\|\s*Idle")).wait_for(timeout=120_000)
                page.locator(".jp-Notebook:visible").first.click()
                t0 = time.time()
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
                done = page.locator(".jp-OutputArea-output", has_text="took / estimated")
                error = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
                while time.time() - t0 < args.timeout and not done.count() and not error.count():
                    time.sleep(2)
                seconds = time.time() - t0
                row = {"stage": stage, "run_all_s": round(seconds, 1)}
                if error.count():
                    row["error"] = error.first.inner_text()[-500:]
                elif done.count():
                    cells = [c.inner_text() for c in done.last.locator("tbody td").all()]
                    heads = [h.inner_text() for h in done.last.locator("thead th").all()][1:]
                    row.update(dict(zip(heads, cells)))
                results.append(row)
                print(json.dumps(row), flush=True)
                page.close()
                base = f"http://127.0.0.1:{port}/api/kernels"
                for k in json.loads(urllib.request.urlopen(f"{base}?token={token}").read()):  # one kernel at a time
                    urllib.request.urlopen(urllib.request.Request(f"{base}/{k['id']}?token={token}", method="DELETE"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    total = sum(r["run_all_s"] for r in results)
    print(f"all notebooks: {total:.0f} s ({total / 60:.1f} min); project kept at {project}")
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "total_s": round(total, 1)}, indent=2))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
