"""The stage context a notebook opens: its config, run folder, artifacts, metrics and LLM, and the
display settings that make the tables it shows safe to share.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from IPython import get_ipython
from pandas.io.formats.style import Styler

from workbench import tasks
from workbench.config import RunConfig, dump_config, load_config, plan_counts
from workbench.files import cache_dir, project_dir, read_json, write_atomic
from workbench.llm import LLM
from workbench.plan import record_stage, work_units
from workbench.runs import RunError, ancestors
from workbench.tables import page_html, reads_as_text, redacted


@dataclass
class Stage:
    """What a stage notebook needs: the config, its run folder, and artifact helpers."""

    name: str
    cfg: RunConfig
    run_dir: Path
    _llm_stats: dict = field(default_factory=dict, init=False, repr=False)
    _llms: dict = field(default_factory=dict, init=False, repr=False)
    _t0: float = field(default_factory=time.perf_counter, init=False, repr=False)

    @property
    def artifacts(self) -> Path:
        return self.run_dir / "artifacts"

    def llm(self, role: str = "generator") -> LLM:
        """The LLM of a role (`roles.<role>`: `llm`, or a model of `models`). Its calls are counted in
        metrics.json under the stage's `llm` (calls, answered from the cache, errors, retries;
        summed over the stage's LLMs), so a resumed stage shows how many of its calls had already
        been paid for. Roles that name the same model share one LLM (one embedded model loaded)."""
        return self._named(self.cfg.roles.names(role)[0])

    def jury(self) -> dict[str, LLM]:
        """03's judges: an LLM for each model `roles.judge` names, by name."""
        return {name: self._named(name) for name in self.cfg.roles.judge}

    def _named(self, name: str) -> LLM:
        if name not in self._llms:
            self._llms[name] = LLM(self.cfg.model_named(name), cache_dir(), on_stats=self._count_llm)
        return self._llms[name]

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
        data = read_json(path)
        data.setdefault(self.name, {}).update(metrics)
        write_atomic(path, json.dumps(data, indent=2, default=float))
        return data

    def metrics(self) -> dict:
        return read_json(self.run_dir / "metrics.json")

    def provenance(self) -> dict:
        """The run's provenance; empty in a scratch folder, which is not a numbered run."""
        return read_json(self.run_dir / "provenance.json")

    def parent_dir(self) -> Path | None:
        """The parent run's folder: provenance's `parent`, else the latest earlier numbered run of the
        same task (with a config.yaml). None when there is none."""
        task_dir = self.run_dir.parent
        parent = self.provenance().get("parent")
        if parent:
            p = Path(parent) if Path(parent).is_absolute() else task_dir / parent
            if (p / "config.yaml").is_file():
                return p
        here = re.match(r"^(\d{3,})-", self.run_dir.name)
        limit = int(here.group(1)) if here else None
        earlier = []
        for p in task_dir.iterdir() if task_dir.is_dir() else []:
            m = re.match(r"^(\d{3,})-", p.name)
            if m and (limit is None or int(m.group(1)) < limit) and (p / "config.yaml").is_file():
                earlier.append((int(m.group(1)), p))
        return max(earlier)[1] if earlier else None

    def parent_config(self) -> tuple[str, str] | None:
        """(name, config text) of the parent run (`parent_dir`). None when there is none."""
        p = self.parent_dir()
        return (p.name, (p / "config.yaml").read_text()) if p is not None else None

    def finish(self) -> pd.DataFrame:
        """The stage's wall time (from open_stage to now) and its LLM time beside 00's estimate for
        it (artifacts/estimate.parquet, when 00 ran in this folder), recorded in metrics.json and
        kept for the estimates of later runs on this machine."""
        seconds = time.perf_counter() - self._t0
        # the embedded model's load counts as LLM time: a stage whose calls are all cached skips it
        llm_s = sum(st.get("seconds", 0.0) + st.get("load_seconds", 0.0) for st in self._llm_stats.values())
        t = tasks.of(self.cfg)
        counts = plan_counts(self.cfg, t.labels(self.cfg), t.label_counts(self.cfg))
        # each task type's stages keep their own records (plan._stage_key): a tool-call 01 is not a classification 01
        record_stage(self.cfg, cache_dir(), self.name, seconds, llm_s, work_units(self.cfg, self.name, counts))
        self.record(timing={"seconds": round(seconds, 1), "llm_seconds": round(llm_s, 1)})
        path = self.artifacts / "estimate.parquet"
        est = pd.read_parquet(path).set_index("stage") if path.is_file() else None
        mine = est.loc[self.name] if est is not None and self.name in est.index else None
        guess = float(mine["seconds"]) if mine is not None else float("nan")
        return pd.DataFrame(
            [
                {
                    "stage": self.name,
                    "estimated_s": round(guess, 1),
                    "took_s": round(seconds, 1),
                    "took / estimated": round(seconds / guess, 2) if guess == guess and guess > 0 else float("nan"),
                    "llm_estimated_s": round(float(mine["llm_seconds"]), 1) if mine is not None else float("nan"),
                    "llm_took_s": round(llm_s, 1),
                    "estimate_basis": mine["time_basis"] if mine is not None else "00_task did not run in this folder",
                }
            ]
        )

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


def _inert_tables() -> None:
    """Tables a stage displays are safe to share: Stylers escape HTML (pandas tables do already;
    a Styler's `format()` resets escaping unless told, so it is told here once for every call),
    and every DataFrame shows its text columns with PII redacted (tables.redacted)."""
    pd.set_option("styler.format.escape", "html")
    if not getattr(Styler.format, "_escapes", False):
        plain = Styler.format

        def format(self, *args, escape="html", **kw):  # noqa: A001 (Styler.format's name)
            return plain(self, *args, escape=escape, **kw)

        format._escapes = True
        Styler.format = format
    ip = get_ipython()
    if ip is None:
        return

    def styler_html(st: Styler) -> str:
        st.data = redacted(st.data)  # a Styler renders from `data` when shown; same index and columns
        text = [c for c in st.data.columns if reads_as_text(st.data[c].dtype)]
        if text:  # read as text: left-aligned (the notebook's stylesheet right-aligns every cell)
            st.set_properties(subset=text, **{"text-align": "left"})
        return st._repr_html_()

    html_formatter = ip.display_formatter.formatters["text/html"]
    html_formatter.for_type(pd.DataFrame, page_html)
    html_formatter.for_type(Styler, styler_html)


class _OncePerMessage(logging.Filter):
    """Lets the first record of each message template through (a warning said after every batch
    is said once on the page; the log file has every one)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg) if record.name != "py.warnings" else str(record.args[:2]))
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _warning_to_log(message, category, filename, lineno, file=None, line=None) -> None:
    logging.getLogger("py.warnings").warning("%s: %s (%s:%d)", category.__name__, message, filename, lineno)


def route_logs(run: Path, name: str) -> Path:
    """Where a stage's log lines go: every line (INFO and up, the workbench's and its libraries'
    warnings, Python warnings included) to `<run>/logs/<name>.log`; on the page only warnings and
    errors, each message once. Called again in the same kernel (Run All twice), it replaces what
    it installed before. Returns the log file."""
    path = run / "logs" / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_workbench", False)]:
        root.removeHandler(h)
        h.close()
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setLevel(logging.INFO)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    to_page = logging.StreamHandler(sys.stderr)
    to_page.setLevel(logging.WARNING)
    to_page.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    to_page.addFilter(_OncePerMessage())
    for h in (to_file, to_page):
        h._workbench = True
        root.addHandler(h)
    root.setLevel(logging.WARNING)  # other libraries: warnings and up
    logging.getLogger("workbench").setLevel(logging.INFO)  # ours: INFO and up, to the file only
    warnings.showwarning = _warning_to_log  # warnings.warn → the py.warnings logger → the same two handlers
    try:  # transformers prints through a handler of its own; send its records here instead
        from transformers.utils import logging as hf_logging  # transformers: 8 of the 9 stages load it anyway

        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
    except ImportError:
        pass
    return path


def open_stage(config: str, run_dir: str, name: str) -> Stage:
    """Context for a notebook. With an empty `run_dir` (Run All in JupyterLab) the stage works in
    `runs/<task>/scratch/` beside the config's folder (files.project_dir), a folder that is not a
    numbered run and may be overwritten."""
    pd.set_option("display.max_colwidth", 160)  # reject piles are read for their text
    # whole tables up to 500 rows (the field → gate table has 64), the first and last 30 of longer ones
    pd.set_option("display.max_rows", 500)
    pd.set_option("display.min_rows", 60)
    pd.set_option("display.max_columns", None)  # every column: ids and reasons are not hidden behind "…"
    _inert_tables()
    cfg, doc = load_config(config)
    sys.audit("workbench.stage", name)  # lets a test see which stage a kernel runs (see test_smoke)
    if run_dir:
        run = Path(run_dir)
    else:
        run = project_dir(config) / "runs" / cfg.task.name / "scratch"
        (run / "artifacts").mkdir(parents=True, exist_ok=True)
        write_atomic(run / "config.yaml", dump_config(cfg, doc))
    if not (run / "artifacts").is_dir():
        raise RunError(f"{run}: not a run folder (no artifacts/)")
    log_file = route_logs(run, name)
    sys.stdout.write(f"{name}: working in {run}; its log: {log_file}\n")
    logging.getLogger(__name__).info("%s opened with config %s", name, config)
    return Stage(name, cfg, run)
