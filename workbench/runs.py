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
dead run is told from a running one. The driver (`driver.py`) executes
the stages; notebooks read their context through `stage.open_stage`."""

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
import time
from pathlib import Path
from typing import Any

from workbench import precision
from workbench.config import STAGE_ORDER, check_runnable, dump_config, load_config
from workbench.files import ROOT, UnreadableFile, read_json, write_atomic

log = logging.getLogger(__name__)


STAGES = list(STAGE_ORDER)
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


def git_state() -> dict:
    """The checkout's commit and whether tracked files differ from it (provenance)."""

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


def _precision(cfg) -> dict:
    """The machine's bf16 support and what the run's models compute in (llm.dtype `auto` resolved)."""
    out = dict(precision.facts())
    out["llm_dtype"] = precision.resolve(cfg.llm.dtype) if cfg.llm.provider == "local" else None
    out["train_bf16"] = {m: precision.trainer_bf16(getattr(cfg.train, m)) for m in cfg.train.methods}
    return out


def new_run(
    config_path: str | Path,
    overrides: list[str] | None = None,
    runs_root: str | Path = ROOT / "runs",
    parent: str | None = None,
    stages: list[str] | None = None,
    extra: dict | None = None,
    task_dir: Path | None = None,
) -> Path:
    """Validate the config (and that `stages` can honour it), then create the next numbered run
    folder with config and provenance (`extra` joins the provenance, e.g. the patch of an iteration)
    in `runs_root`/<task name>, or in `task_dir` when given (an iteration goes beside its parent)."""
    cfg, doc = load_config(config_path, overrides)
    check_runnable(cfg, stages)
    task_dir = Path(task_dir) if task_dir is not None else Path(runs_root) / cfg.task.name
    try:
        task_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(
            f"{task_dir}: cannot create the runs folder ({e.strerror}); choose another with --runs-dir"
        ) from None
    while True:  # mkdir is the lock: two runs started at once get distinct folders
        nums = [int(m.group(1)) for p in task_dir.iterdir() if (m := re.match(r"^(\d{3,})-", p.name))]
        run = task_dir / f"{max(nums, default=0) + 1:03d}-{dt.datetime.now():%Y%m%d-%H%M%S}"
        try:
            run.mkdir()
            break
        except FileExistsError:
            time.sleep(0.05)
        except OSError as e:  # read-only, full, …
            raise RunError(
                f"{task_dir}: cannot create a run folder there ({e.strerror}); choose another with --runs-dir"
            ) from None
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
        "git": git_state(),
        "packages": _versions(),
        "precision": _precision(cfg),
        "models": {name: f"{m.provider}/{m.model}" for name, m in cfg.models_in_use().items()},
        "roles": cfg.roles.model_dump(),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "finished": None,
        "status": "created",
        "stages": {},
    }
    prov.update(extra or {})
    write_atomic(run / "provenance.json", json.dumps(prov, indent=2))
    return run


def held_lock(run: Path) -> RunLock | None:
    """The lock this process took when it created `run` (new_run), handed once to whoever executes
    the run in this process; None when another process created it."""
    return _HELD.pop(Path(run).resolve(), None)


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
        try:
            prov = read_json(run / "provenance.json")
        except UnreadableFile as e:  # one broken run folder must not stop every later run of the task
            log.warning("not resuming %s: %s", run.name, e)
            continue
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


def update_provenance(run: Path, **changes: Any) -> dict:
    prov = read_json(run / "provenance.json")
    stages = changes.pop("stages", None)
    prov.update(changes)
    if stages:
        for name, status in stages.items():
            prov["stages"].setdefault(name, {}).update(status)
    write_atomic(run / "provenance.json", json.dumps(prov, indent=2))
    return prov


def ancestors(run: Path) -> list[Path]:
    """Earlier iterations of `run`: its parent (provenance `parent`), the parent's parent, and so on."""
    out: list[Path] = []
    run = Path(run)
    while True:
        try:
            parent = read_json(run / "provenance.json").get("parent")
        except UnreadableFile as e:
            log.warning("lineage stops at %s: %s", run.name, e)
            return out
        if not parent:
            return out
        p = Path(parent) if Path(parent).is_absolute() else run.parent / parent
        if not p.is_dir() or p in out:
            return out
        out.append(p)
        run = p
