"""The stage context a notebook opens: its config, run folder, artifacts, metrics and LLM, and the
display settings that make the tables it shows safe to share.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from IPython import get_ipython
from pandas.io.formats.style import Styler

from workbench.config import RunConfig, dump_config, load_config
from workbench.files import cache_dir, project_dir, read_json, write_atomic
from workbench.llm import LLM
from workbench.runs import RunError, ancestors
from workbench.tables import redacted


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
        data = read_json(path)
        data.setdefault(self.name, {}).update(metrics)
        write_atomic(path, json.dumps(data, indent=2, default=float))
        return data

    def metrics(self) -> dict:
        return read_json(self.run_dir / "metrics.json")

    def provenance(self) -> dict:
        """The run's provenance; empty in a scratch folder, which is not a numbered run."""
        return read_json(self.run_dir / "provenance.json")

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
        return st._repr_html_()

    html_formatter = ip.display_formatter.formatters["text/html"]
    html_formatter.for_type(pd.DataFrame, lambda df: redacted(df)._repr_html_())
    html_formatter.for_type(Styler, styler_html)


def open_stage(config: str, run_dir: str, name: str) -> Stage:
    """Context for a notebook. With an empty `run_dir` (Run All in JupyterLab) the stage works in
    `runs/<task>/scratch/` beside the config's folder (files.project_dir), a folder that is not a
    numbered run and may be overwritten."""
    pd.set_option("display.max_colwidth", 160)  # reject piles are read for their text
    pd.set_option("display.max_rows", 60)
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
    return Stage(name, cfg, run)
