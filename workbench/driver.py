"""The papermill driver: execute a run's stage notebooks in order (resuming a run that did not
finish), record each stage's status in provenance, then write the offline report and the task's
lineage page. `iterate` starts the next iteration of a finished run from its 07 patch.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import papermill
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.paths import jupyter_runtime_dir

from workbench import gaps, lineage, tasks
from workbench.config import load_config
from workbench.files import BATCH_ENV, ROOT, read_json, write_atomic
from workbench.report import export_html
from workbench.runs import STAGES, RunError, RunLock, git_state, held_lock, new_run, update_provenance

log = logging.getLogger(__name__)


NOTEBOOKS = ROOT / "notebooks"
PARAMETERS = {"config", "run_dir"}  # what every stage notebook takes, and nothing else


def iterate(parent: str | Path, accept: list[str] | None = None, accept_all: bool = False) -> Path:
    """Create the next iteration of a finished run: a new numbered run whose config is the parent's
    with the accepted edits of the parent's 07 patch applied, and `parent` set in its provenance."""
    parent = Path(parent).resolve()
    prov = read_json(parent / "provenance.json")
    if not prov:
        raise RunError(f"{parent}: not a run folder (no provenance.json)")
    if prov.get("stages", {}).get("07_gaps", {}).get("status") != "done":
        raise RunError(f"{parent}: stage 07_gaps has not finished there, so it has no config patch to apply")
    busy = RunLock(parent)
    if not busy.acquire():
        raise RunError(f"{parent}: another process is executing it ({busy.holder()}); iterate once it has finished")
    busy.release()
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
    text = gaps.apply(parent / "config.yaml", chosen, tasks.of(cfg).labels(cfg), header)
    tmp = parent.parent / f".{parent.name}.next{os.getpid()}.yaml"
    write_atomic(tmp, text)
    try:
        return new_run(
            tmp,
            task_dir=parent.parent,  # beside its parent, wherever that folder was moved or copied
            parent=parent.name,
            extra={
                "config_source": f"{parent / 'config.yaml'} + {patch.name}",
                "patch": {"from": f"{parent.name}/artifacts/{patch.name}", "accepted": ids, "edits": chosen},
            },
        )
    finally:
        tmp.unlink(missing_ok=True)


def notebook_parameters(path: Path) -> set[str]:
    return set(papermill.inspect_notebook(str(path)))


def stage_notebook(folder: Path | None, stage: str) -> Path:
    """A stage's notebook: notebooks/<stage>.ipynb, the same for every task type (or in `folder`)."""
    return (folder or NOTEBOOKS) / f"{stage}.ipynb"


def check_notebooks(stages: list[str], folder: Path | None = None) -> None:
    """Refuse to start unless every stage notebook exists and takes exactly `config` and `run_dir`."""
    problems = []
    for s in stages:
        nb = stage_notebook(folder, s)
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


def validate_stages(stages: list[str] | None, folder: Path | None = None) -> list[str]:
    """The stages to run, in pipeline order, after checking names and notebooks (None: all)."""
    if stages is not None and not [s for s in stages if s]:
        raise RunError(
            f"--stages: no stage named; give a comma-separated subset of {','.join(STAGES)}, or leave it out"
        )
    stages = [s for s in stages if s] if stages is not None else STAGES
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise RunError(f"--stages: unknown stages {unknown}; valid: {', '.join(STAGES)}")
    stages = [s for s in STAGES if s in stages]
    check_notebooks(stages, folder)
    return stages


def execute(run: Path, stages: list[str] | None = None, lock: RunLock | None = None) -> Path:
    """Execute the stage notebooks in order; stop at the first failure with its notebook kept.

    Stages already done (a resumed run) are skipped; a stage left `running` by a process that
    died is marked `interrupted` first. Ctrl-C or SIGTERM marks the current stage and the run
    `interrupted`. `lock`: the run's lock when the caller already holds it."""
    run = Path(run).resolve()
    prov = read_json(run / "provenance.json")
    if not prov:
        raise RunError(f"{run}: not a run folder (no provenance.json)")
    if prov.get("status") == "finished":
        raise RunError(f"{run}: this run finished at {prov.get('finished')} and is never rewritten; start a new run")
    lock = lock or held_lock(run) or RunLock(run)
    if lock.fd is None and not lock.acquire():
        raise RunError(f"{run}: another process is executing this run (pid, host: {lock.holder()}); wait for it")
    try:
        return _execute(run, prov, validate_stages(stages), stages is None, NOTEBOOKS)
    finally:
        lock.release()


class QuietKernelManager(AsyncKernelManager):
    """A stage's kernel on Unix sockets in Jupyter's runtime folder, named for the kernel (so two
    runs in one folder never share one), rather than on TCP ports of 127.0.0.1: nothing else on
    the machine can connect, and ipykernel has no reason to warn on every stage that the
    connection is unencrypted."""

    def __init__(self, **kw: Any) -> None:
        if os.name == "posix":
            folder = jupyter_runtime_dir()
            if len(folder) > 80:  # a socket's path has at most 107 bytes
                folder = tempfile.gettempdir()
            os.makedirs(folder, exist_ok=True)
            kw.setdefault("transport", "ipc")
            kw.setdefault("ip", os.path.join(folder, f"kernel-{uuid.uuid4().hex[:12]}-ipc"))
        super().__init__(**kw)


def papermill_execute(src: str, out: str, **kw: Any) -> Any:
    """papermill.execute_notebook (a seam for tests), the kernel on Unix sockets (QuietKernelManager)."""
    kw.setdefault("kernel_manager_class", QuietKernelManager)
    return papermill.execute_notebook(src, out, **kw)


def _execute(run: Path, prov: dict, stages: list[str], all_stages: bool, folder: Path) -> Path:
    now = dt.datetime.now().isoformat(timespec="seconds")
    done_before = [s for s in stages if prov.get("stages", {}).get(s, {}).get("status") == "done"]
    # a stage left `running` by a process that died (kill -9, a crash, the machine going down)
    dead = {s: {"status": "interrupted", "interrupted": v.get("interrupted", []) + [{"noticed": now}]}
            for s, v in prov.get("stages", {}).items() if v.get("status") == "running"}  # fmt: skip
    todo = [s for s in stages if s not in done_before]
    attempt = {"started": now, "pid": os.getpid(), "host": socket.gethostname(), "git": git_state()["sha"],
               "from_stage": todo[0] if todo else None}  # fmt: skip
    if done_before or dead:
        log.info("resuming %s: done %s; from %s", run.name, ", ".join(done_before) or "nothing", attempt["from_stage"])
        _remove_leftovers(run)
    # the "python3" kernel must be this environment's, not one a user registered elsewhere
    os.environ.setdefault("JUPYTER_PREFER_ENV_PATH", "1")
    os.environ[BATCH_ENV] = "1"  # the kernels inherit it: text progress, no widgets (files.batch_mode)
    update_provenance(run, status="running", attempts=prov.get("attempts", []) + [attempt], stages=dead)
    (run / "notebooks").mkdir(exist_ok=True)
    for s in todo:
        out = run / "notebooks" / f"{s}.ipynb"
        t0 = time.time()
        update_provenance(
            run, stages={s: {"status": "running", "started": dt.datetime.now().isoformat(timespec="seconds")}}
        )
        log.info("stage %s …", s)
        try:
            papermill_execute(
                str(stage_notebook(folder, s)),
                str(out),
                parameters={"config": str(run / "config.yaml"), "run_dir": str(run)},
                cwd=str(folder),
                kernel_name="python3",
                progress_bar=False,
                log_output=False,
            )
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into this)
            was = read_json(run / "provenance.json").get("stages", {}).get(s, {}).get("interrupted", [])
            when = {"noticed": dt.datetime.now().isoformat(timespec="seconds"), "after_s": round(time.time() - t0, 1)}
            stopped = {s: {"status": "interrupted", "interrupted": was + [when]}}
            update_provenance(run, status="interrupted", stages=stopped)
            raise
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            update_provenance(
                run,
                status="failed",
                stages={s: {"status": "failed", "seconds": round(time.time() - t0, 1), "error": _short_error(e)}},
            )
            export_html(run)
            raise RunError(f"stage {s} failed; the executed notebook is kept at {out}\n{_short_error(e)}") from e
        seconds = round(time.time() - t0, 1)
        update_provenance(run, stages={s: {"status": "done", "seconds": seconds}})
        log.info("stage %s done in %.1f s", s, seconds)
    export_html(run)
    if all_stages or set(stages) == set(STAGES):
        update_provenance(run, status="finished", finished=dt.datetime.now().isoformat(timespec="seconds"))
    else:
        update_provenance(run, status="partial")
    try:  # after the status, so the page shows this run as it ends
        lineage.write_index(run.parent)
    except Exception as e:  # the run itself is done; a lineage page that cannot be built must not undo it
        log.warning("runs/%s/index.html not written: %s: %s", run.parent.name, type(e).__name__, e)
    return run


def _remove_leftovers(run: Path) -> None:
    """Temporary files and folders a killed process left (write_atomic's `.NAME.tmpPID`,
    replace_dir's `.NAME.oldPID`): never a valid artifact, so removed before a run resumes."""
    for p in sorted(run.rglob(".*"), key=lambda p: -len(p.parts)):
        if re.search(r"\.(tmp|old)\d+$", p.name):
            log.info("removing %s, left by an interrupted write", p)
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def _short_error(e: Exception) -> str:
    ename, evalue = getattr(e, "ename", type(e).__name__), getattr(e, "evalue", str(e))
    return f"{ename}: {evalue}"


# ---------------------------------------------------------------- offline HTML
