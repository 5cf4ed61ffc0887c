"""Run folders and the papermill driver.

A run is `runs/<task>/<NNN>-<YYYYmmdd-HHMMSS>/` holding:

    config.yaml        the fully resolved config, written once
    provenance.json    git SHA and dirty flag, package versions, parent run, times, stage status
    notebooks/         the executed stage notebooks
    artifacts/         tables (parquet), models, figures' data
    metrics.json       numbers the stages report
    report/            offline HTML of every stage (code hidden) and index.html
    report.html        the summary page (99_report) with links to every stage

A finished run is never rewritten. A run that did not finish (killed, interrupted, a stage
failed) is resumed by `workbench run` with the same config: the stages marked done are kept, the
interrupted stage is marked so in provenance and runs again, and the LLM calls it had paid for are
answered from the cache. While a process executes a run it holds an exclusive lock on `.lock` in
the run folder; the kernel drops the lock when the process dies, even by kill -9, which is how a
dead run is told from a running one. Notebooks read their context through `open_stage`.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import importlib.metadata
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.config import RunConfig, check_runnable, dump_config, load_config

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
STAGES = [
    "00_task",
    "01_prompts",
    "02_responses",
    "03_judge",
    "04_filter",
    "05_train",
    "06_evaluate",
    "07_gaps",
    "99_report",
]
PARAMETERS = {"config", "run_dir"}
_PACKAGES = [
    "workbench",
    "torch",
    "transformers",
    "sentence-transformers",
    "openai",
    "pandas",
    "scikit-learn",
    "umap-learn",
    "hdbscan",
    "plotly",
    "papermill",
    "nbconvert",
    "trl",
    "datasets",
    "pydantic",
]


class RunError(RuntimeError):
    """A run that cannot start or go on; the message names the run, stage or notebook."""


def cache_dir() -> Path:
    """Where LLM calls, embeddings and converted models are cached (WORKBENCH_CACHE overrides)."""
    return Path(os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench")


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write via a temporary file and rename, so `path` never exists half-written. When the write
    fails (disk full, …) the temporary file is removed and the error names `path`; an earlier
    version of `path` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"{path}: not written ({e.strerror or e}); nothing half-written was left") from e


def replace_dir(tmp: Path, out: Path) -> None:
    """Put a folder written in full at `tmp` in place of `out` (e.g. a saved model): `out` is
    either the old folder or the new one, never a half-written one."""
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        import shutil

        shutil.rmtree(old, ignore_errors=True)


_HELD: dict[Path, RunLock] = {}  # runs this process created and holds, until it executes them


class RunLock:
    """An exclusive lock on `run/.lock` for as long as a process executes the run (flock: the
    kernel releases it when the process dies, kill -9 included)."""

    def __init__(self, run: Path):
        self.path = Path(run) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self.fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _git() -> dict:
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    return {
        "sha": git("rev-parse", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def _versions() -> dict:
    out = {}
    for p in _PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


def new_run(
    config_path: str | Path,
    overrides: list[str] | None = None,
    runs_root: str | Path = ROOT / "runs",
    parent: str | None = None,
    stages: list[str] | None = None,
    extra: dict | None = None,
) -> Path:
    """Validate the config (and that `stages` can honour it), then create the next numbered run
    folder with config and provenance (`extra` joins the provenance, e.g. the patch of an iteration)."""
    cfg, doc = load_config(config_path, overrides)
    check_runnable(cfg, stages)
    task_dir = Path(runs_root) / cfg.task.name
    task_dir.mkdir(parents=True, exist_ok=True)
    while True:  # mkdir is the lock: two runs started at once get distinct folders
        nums = [int(m.group(1)) for p in task_dir.iterdir() if (m := re.match(r"^(\d{3,})-", p.name))]
        run = task_dir / f"{max(nums, default=0) + 1:03d}-{dt.datetime.now():%Y%m%d-%H%M%S}"
        try:
            run.mkdir()
            break
        except FileExistsError:
            time.sleep(0.05)
    # locked before it has a provenance: another `workbench run` of the same config, looking for
    # an unfinished run to resume, never takes one that is being created
    lock = RunLock(run)
    lock.acquire()
    _HELD[run.resolve()] = lock
    (run / "artifacts").mkdir()
    write_atomic(run / "config.yaml", dump_config(cfg, doc))
    prov = {
        "stages_requested": stages,
        "run": run.name,
        "task": cfg.task.name,
        "config_source": str(Path(config_path).resolve()),
        "overrides": list(overrides or []),
        "parent": parent,
        "git": _git(),
        "packages": _versions(),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "finished": None,
        "status": "created",
        "stages": {},
    }
    prov.update(extra or {})
    write_atomic(run / "provenance.json", json.dumps(prov, indent=2))
    return run


UNFINISHED = ("created", "running", "interrupted", "failed")


def find_resumable(
    config_path: str | Path,
    overrides: list[str] | None = None,
    runs_root: str | Path = ROOT / "runs",
    stages: list[str] | None = None,
) -> tuple[Path, RunLock] | None:
    """The latest run of this config (same resolved config text, same stages, not an iteration)
    that did not finish and that no process is executing, locked for the caller; None when there
    is none."""
    cfg, doc = load_config(config_path, overrides)
    task_dir = Path(runs_root) / cfg.task.name
    if not task_dir.is_dir():
        return None
    text = dump_config(cfg, doc)
    for run in sorted((p for p in task_dir.iterdir() if re.match(r"^\d{3,}-", p.name)), reverse=True):
        prov = _read_json(run / "provenance.json")
        if (
            prov.get("status") not in UNFINISHED
            or prov.get("parent")
            or prov.get("stages_requested", stages) != stages
            or not (run / "config.yaml").is_file()
            or (run / "config.yaml").read_text() != text
        ):
            continue
        lock = RunLock(run)
        if lock.acquire():
            return run, lock
    return None


def iterate(parent: str | Path, accept: list[str] | None = None, accept_all: bool = False) -> Path:
    """Create the next iteration of a finished run: a new numbered run whose config is the parent's
    with the accepted edits of the parent's 07 patch applied, and `parent` set in its provenance."""
    from workbench import data, gaps

    parent = Path(parent).resolve()
    prov = _read_json(parent / "provenance.json")
    if not prov:
        raise RunError(f"{parent}: not a run folder (no provenance.json)")
    if prov.get("stages", {}).get("07_gaps", {}).get("status") != "done":
        raise RunError(f"{parent}: stage 07_gaps has not finished there, so it has no config patch to apply")
    patch = parent / "artifacts" / "config_patch.yaml"
    chosen = gaps.select(gaps.load_patch(patch), accept, accept_all)
    if not chosen:
        raise RunError(
            f"{patch}: no edit accepted, so the next iteration would repeat this one; "
            "pass --accept e1,e2 (ids from the patch) or --accept-all"
        )
    cfg, _ = load_config(parent / "config.yaml")
    ids = [e["id"] for e in chosen]
    header = (
        f"# Iteration after {parent.name}: edits {', '.join(ids)} of its 07_gaps patch applied "
        f"(artifacts/config_patch.yaml there says why).\n"
    )
    text = gaps.apply(parent / "config.yaml", chosen, data.labels(cfg), header)
    tmp = parent.parent / f".{parent.name}.next{os.getpid()}.yaml"
    write_atomic(tmp, text)
    try:
        return new_run(
            tmp,
            runs_root=parent.parent.parent,
            parent=parent.name,
            extra={
                "config_source": f"{parent / 'config.yaml'} + {patch.name}",
                "patch": {"from": f"{parent.name}/artifacts/{patch.name}", "accepted": ids, "edits": chosen},
            },
        )
    finally:
        tmp.unlink(missing_ok=True)


def notebook_parameters(path: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(path)))


def check_notebooks(stages: list[str]) -> None:
    """Refuse to start unless every stage notebook exists and takes exactly `config` and `run_dir`."""
    problems = []
    for s in stages:
        nb = NOTEBOOKS / f"{s}.ipynb"
        if not nb.is_file():
            problems.append(f"{nb}: notebook not found")
            continue
        try:
            found = notebook_parameters(nb)
        except Exception as e:  # unreadable JSON, no kernelspec, …
            problems.append(f"{nb}: cannot read its parameters: {type(e).__name__}: {e}")
            continue
        if found != PARAMETERS:
            problems.append(f"{nb}: parameters cell declares {sorted(found)}; expected exactly {sorted(PARAMETERS)}")
    if problems:
        raise RunError("stage notebooks are not runnable:\n  " + "\n  ".join(problems))


def validate_stages(stages: list[str] | None) -> list[str]:
    """The stages to run, in pipeline order, after checking names and notebooks."""
    stages = stages or STAGES
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise RunError(f"--stages: unknown stages {unknown}; valid: {', '.join(STAGES)}")
    stages = [s for s in STAGES if s in stages]
    check_notebooks(stages)
    return stages


def _update_provenance(run: Path, **changes: Any) -> dict:
    prov = _read_json(run / "provenance.json")
    stages = changes.pop("stages", None)
    prov.update(changes)
    if stages:
        for name, status in stages.items():
            prov["stages"].setdefault(name, {}).update(status)
    write_atomic(run / "provenance.json", json.dumps(prov, indent=2))
    return prov


def execute(run: Path, stages: list[str] | None = None, lock: RunLock | None = None) -> Path:
    """Execute the stage notebooks in order; stop at the first failure with its notebook kept.

    Stages already done (a resumed run) are skipped; a stage left `running` by a process that
    died is marked `interrupted` first. Ctrl-C or SIGTERM marks the current stage and the run
    `interrupted`. `lock`: the run's lock when the caller already holds it."""
    run = Path(run).resolve()
    prov = _read_json(run / "provenance.json")
    if not prov:
        raise RunError(f"{run}: not a run folder (no provenance.json)")
    if prov.get("status") == "finished":
        raise RunError(f"{run}: this run finished at {prov.get('finished')} and is never rewritten; start a new run")
    lock = lock or _HELD.pop(run, None) or RunLock(run)
    if lock.fd is None and not lock.acquire():
        raise RunError(f"{run}: another process is executing this run (pid, host: {lock.holder()}); wait for it")
    try:
        return _execute(run, prov, validate_stages(stages), stages is None)
    finally:
        lock.release()


def papermill_execute(src: str, out: str, **kw: Any) -> Any:
    """papermill.execute_notebook (a seam for tests)."""
    import papermill

    return papermill.execute_notebook(src, out, **kw)


def _execute(run: Path, prov: dict, stages: list[str], all_stages: bool) -> Path:
    now = dt.datetime.now().isoformat(timespec="seconds")
    done_before = [s for s in stages if prov.get("stages", {}).get(s, {}).get("status") == "done"]
    # a stage left `running` by a process that died (kill -9, a crash, the machine going down)
    dead = {s: {"status": "interrupted", "interrupted": v.get("interrupted", []) + [{"noticed": now}]}
            for s, v in prov.get("stages", {}).items() if v.get("status") == "running"}  # fmt: skip
    todo = [s for s in stages if s not in done_before]
    attempt = {"started": now, "pid": os.getpid(), "host": socket.gethostname(), "git": _git()["sha"],
               "from_stage": todo[0] if todo else None}  # fmt: skip
    if done_before or dead:
        log.info("resuming %s: done %s; from %s", run.name, ", ".join(done_before) or "nothing", attempt["from_stage"])
        _remove_leftovers(run)
    # the "python3" kernel must be this environment's, not one a user registered elsewhere
    os.environ.setdefault("JUPYTER_PREFER_ENV_PATH", "1")
    _update_provenance(run, status="running", attempts=prov.get("attempts", []) + [attempt], stages=dead)
    (run / "notebooks").mkdir(exist_ok=True)
    for s in todo:
        out = run / "notebooks" / f"{s}.ipynb"
        t0 = time.time()
        _update_provenance(
            run, stages={s: {"status": "running", "started": dt.datetime.now().isoformat(timespec="seconds")}}
        )
        log.info("stage %s …", s)
        try:
            papermill_execute(
                str(NOTEBOOKS / f"{s}.ipynb"),
                str(out),
                parameters={"config": str(run / "config.yaml"), "run_dir": str(run)},
                cwd=str(NOTEBOOKS),
                kernel_name="python3",
                progress_bar=False,
                log_output=False,
            )
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into this)
            was = _read_json(run / "provenance.json").get("stages", {}).get(s, {}).get("interrupted", [])
            when = {"noticed": dt.datetime.now().isoformat(timespec="seconds"), "after_s": round(time.time() - t0, 1)}
            stopped = {s: {"status": "interrupted", "interrupted": was + [when]}}
            _update_provenance(run, status="interrupted", stages=stopped)
            raise
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            _update_provenance(
                run,
                status="failed",
                stages={s: {"status": "failed", "seconds": round(time.time() - t0, 1), "error": _short_error(e)}},
            )
            export_html(run)
            raise RunError(f"stage {s} failed; the executed notebook is kept at {out}\n{_short_error(e)}") from e
        seconds = round(time.time() - t0, 1)
        _update_provenance(run, stages={s: {"status": "done", "seconds": seconds}})
        log.info("stage %s done in %.1f s", s, seconds)
    export_html(run)
    if all_stages or set(stages) == set(STAGES):
        _update_provenance(run, status="finished", finished=dt.datetime.now().isoformat(timespec="seconds"))
    else:
        _update_provenance(run, status="partial")
    try:  # after the status, so the page shows this run as it ends
        from workbench import lineage

        lineage.write_index(run.parent)
    except Exception as e:  # the run itself is done; a lineage page that cannot be built must not undo it
        log.warning("runs/%s/index.html not written: %s: %s", run.parent.name, type(e).__name__, e)
    return run


def _remove_leftovers(run: Path) -> None:
    """Temporary files and folders a killed process left (write_atomic's `.NAME.tmpPID`,
    replace_dir's `.NAME.oldPID`): never a valid artifact, so removed before a run resumes."""
    import shutil

    for p in sorted(run.rglob(".*"), key=lambda p: -len(p.parts)):
        if re.search(r"\.(tmp|old)\d+$", p.name):
            log.info("removing %s, left by an interrupted write", p)
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def _short_error(e: Exception) -> str:
    ename, evalue = getattr(e, "ename", type(e).__name__), getattr(e, "evalue", str(e))
    return f"{ename}: {evalue}"


# ---------------------------------------------------------------- offline HTML


def export_html(run: Path) -> Path:
    """Each executed notebook → report/<stage>.html (code hidden); report.html joins the summary
    page (99_report) with links to every stage; index.html lists stages with their status."""
    run = Path(run)
    out = run / "report"
    out.mkdir(exist_ok=True)
    exporter = _inert_exporter_class()(
        template_name="lab", exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    )
    prov = _read_json(run / "provenance.json")
    done = []
    for s in STAGES:
        nb = run / "notebooks" / f"{s}.ipynb"
        if nb.is_file():
            body, _ = exporter.from_filename(str(nb))
            # the lab template loads require.js and MathJax from a CDN; no page here needs either
            body = re.sub(r"<script[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>", "", body)
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


def _inert_exporter_class():
    from jinja2 import pass_context
    from nbconvert import HTMLExporter
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

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


@dataclass
class Stage:
    """What a stage notebook needs: the config, its run folder, and artifact helpers."""

    name: str
    cfg: RunConfig
    run_dir: Path
    _llm_stats: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def artifacts(self) -> Path:
        return self.run_dir / "artifacts"

    def llm(self):
        """The stage's LLM. Its calls are counted in metrics.json under the stage's `llm`
        (calls, answered from the cache, errors, retries; summed over the stage's LLMs), so a
        resumed stage shows how many of its calls had already been paid for."""
        from workbench.llm import LLM

        return LLM(self.cfg.llm, cache_dir(), on_stats=self._count_llm)

    def _count_llm(self, stats: dict) -> None:
        self._llm_stats[id(stats)] = dict(stats)
        total: dict[str, int] = {}
        for st in self._llm_stats.values():
            for k, v in st.items():
                total[k] = total.get(k, 0) + v
        self.record(llm=total)

    def save(self, df: pd.DataFrame, name: str) -> Path:
        path = self.artifacts / f"{name}.parquet"
        write_atomic(path, df.to_parquet(index=False))
        return path

    def load(self, name: str) -> pd.DataFrame:
        path = self.artifacts / f"{name}.parquet"
        if not path.is_file():
            raise RunError(f"{path}: missing; run the stage that writes '{name}' first")
        return pd.read_parquet(path)

    def record(self, **metrics: Any) -> dict:
        """Merge this stage's numbers into metrics.json under the stage's name."""
        path = self.run_dir / "metrics.json"
        data = _read_json(path)
        data.setdefault(self.name, {}).update(metrics)
        write_atomic(path, json.dumps(data, indent=2, default=float))
        return data

    def metrics(self) -> dict:
        return _read_json(self.run_dir / "metrics.json")

    def provenance(self) -> dict:
        """The run's provenance; empty in a scratch folder, which is not a numbered run."""
        return _read_json(self.run_dir / "provenance.json")

    def parent_config(self) -> tuple[str, str] | None:
        """(name, config text) of the parent run: provenance's `parent`, else the latest earlier
        numbered run of the same task. None when there is none."""
        task_dir = self.run_dir.parent
        parent = self.provenance().get("parent")
        if parent:
            p = Path(parent) if Path(parent).is_absolute() else task_dir / parent
            if (p / "config.yaml").is_file():
                return p.name, (p / "config.yaml").read_text()
        here = re.match(r"^(\d{3,})-", self.run_dir.name)
        limit = int(here.group(1)) if here else None
        earlier = []
        for p in task_dir.iterdir() if task_dir.is_dir() else []:
            m = re.match(r"^(\d{3,})-", p.name)
            if m and (limit is None or int(m.group(1)) < limit) and (p / "config.yaml").is_file():
                earlier.append((int(m.group(1)), p))
        if not earlier:
            return None
        p = max(earlier)[1]
        return p.name, (p / "config.yaml").read_text()

    def ancestors(self) -> list[Path]:
        return ancestors(self.run_dir)

    def earlier_prompts(self) -> pd.DataFrame:
        """id (`<run>/<row id>`) and text of the prompts earlier iterations kept."""
        frames = []
        for run in self.ancestors():
            path = run / "artifacts" / "prompts.parquet"
            if path.is_file():
                df = pd.read_parquet(path, columns=["id", "text", "keep_prompts"])
                df = df[df["keep_prompts"]]
                frames.append(pd.DataFrame({"id": run.name + "/" + df["id"], "text": df["text"]}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"id": [], "text": []})

    def earlier_rows(self) -> pd.DataFrame:
        """Every row earlier iterations generated (04's dataset of each ancestor, its own rows only,
        verdicts kept), ids `<run>/<row id>`, `carried_from` = that run: an iteration adds to the
        data before it (01 rejects prompts that repeat earlier ones as seen_before)."""
        frames = []
        for run in self.ancestors():
            path = run / "artifacts" / "dataset.parquet"
            if path.is_file():
                df = pd.read_parquet(path)
                if "carried_from" in df:
                    df = df[df["carried_from"].isna()]
                frames.append(df.assign(id=run.name + "/" + df["id"].astype(str), carried_from=run.name))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def stage_times(self) -> pd.DataFrame:
        """Status, start and seconds of each stage so far (empty in a scratch folder)."""
        stages = self.provenance().get("stages", {})
        return pd.DataFrame(
            [{"stage": s, **v} for s, v in stages.items()], columns=["stage", "status", "started", "seconds"]
        )


def ancestors(run: Path) -> list[Path]:
    """Earlier iterations of `run`: its parent (provenance `parent`), the parent's parent, and so on."""
    out: list[Path] = []
    run = Path(run)
    while True:
        parent = _read_json(run / "provenance.json").get("parent")
        if not parent:
            return out
        p = Path(parent) if Path(parent).is_absolute() else run.parent / parent
        if not p.is_dir() or p in out:
            return out
        out.append(p)
        run = p


def _inert_tables() -> None:
    """Tables a stage displays are safe to share: Stylers escape HTML (pandas tables do already;
    a Styler's `format()` resets escaping unless told, so it is told here once for every call),
    and every DataFrame shows its text columns with PII redacted (plots.redacted)."""
    from pandas.io.formats.style import Styler

    pd.set_option("styler.format.escape", "html")
    if not getattr(Styler.format, "_escapes", False):
        plain = Styler.format

        def format(self, *args, escape="html", **kw):  # noqa: A001 (Styler.format's name)
            return plain(self, *args, escape=escape, **kw)

        format._escapes = True
        Styler.format = format
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return
    from workbench.plots import redacted

    def styler_html(st: Styler) -> str:
        st.data = redacted(st.data)  # a Styler renders from `data` when shown; same index and columns
        return st._repr_html_()

    html_formatter = ip.display_formatter.formatters["text/html"]
    html_formatter.for_type(pd.DataFrame, lambda df: redacted(df)._repr_html_())
    html_formatter.for_type(Styler, styler_html)


def open_stage(config: str, run_dir: str, name: str) -> Stage:
    """Context for a notebook. With an empty `run_dir` (Run All in JupyterLab) the stage works in
    `runs/<task>/scratch/`, a folder that is not a numbered run and may be overwritten."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    pd.set_option("display.max_colwidth", 160)  # reject piles are read for their text
    pd.set_option("display.max_rows", 60)
    _inert_tables()
    cfg, doc = load_config(config)
    sys.audit("workbench.stage", name)  # lets a test see which stage a kernel runs (see test_smoke)
    if run_dir:
        run = Path(run_dir)
    else:
        run = ROOT / "runs" / cfg.task.name / "scratch"
        (run / "artifacts").mkdir(parents=True, exist_ok=True)
        write_atomic(run / "config.yaml", dump_config(cfg, doc))
    if not (run / "artifacts").is_dir():
        raise RunError(f"{run}: not a run folder (no artifacts/)")
    return Stage(name, cfg, run)
