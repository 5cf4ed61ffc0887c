"""The 00_task form: edit a config's labels, counts, temperatures and controls in JupyterLab,
preview sample rows, see the diff against the parent run, and save — comments kept.

`apply_values(path, values)` is the whole logic without widgets (tests call it): it sets dotted
values in the YAML document, validates the result as `workbench run` would, and returns the
new text, so a bad value is an error in the form and never a half-written file.
"""

from __future__ import annotations

import difflib
import io
import re
import tempfile
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd
from IPython.display import display

from workbench import prompts
from workbench.config import ConfigError, RunConfig, _set_dotted, _yaml, dump_config, load_config, to_yaml_value
from workbench.files import write_atomic


def _shares_text(items) -> str:
    return "\n".join(x.name if x.share is None else f"{x.name}: {x.share:g}" for x in items)


def _parse_shares(text: str) -> list:
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = re.match(r"^(.*?):\s*([0-9.]+)\s*$", line)
        out.append({"name": m.group(1).strip(), "share": float(m.group(2))} if m else line.strip())
    return out


def form_values(cfg: RunConfig) -> dict[str, Any]:
    """The editable values of a config, keyed by dotted field."""
    return {
        "task.labels": "\n".join(cfg.task.label_names() or []),
        "sampling.rows_per_label": cfg.sampling.rows_per_label,
        "data.seeds_per_label": cfg.data.seeds_per_label,
        "prompts.temperature": cfg.prompts.temperature,
        "prompts.top_p": cfg.prompts.top_p,
        "responses.temperature": cfg.responses.temperature,
        "diversity.personas": _shares_text(cfg.diversity.personas),
        "diversity.tones": _shares_text(cfg.diversity.tones),
        "diversity.difficulty": dict(cfg.diversity.difficulty),
        "task.edge_cases": "\n".join(cfg.task.edge_cases),
        "diversity.edge_case_share": cfg.diversity.edge_case_share,
        "quality.min_chars": cfg.quality.min_chars,
        "quality.max_chars": cfg.quality.max_chars,
        "quality.language": cfg.quality.language or "",
        "quality.pii": cfg.quality.pii,
        "quality.profanity": cfg.quality.profanity,
    }


def _to_yaml(key: str, value: Any, cfg: RunConfig) -> Any:
    if key == "task.labels":
        names = [x.strip() for x in str(value).splitlines() if x.strip()]
        if not names:
            return None
        specs = {x.name: x for x in cfg.task.labels or []}  # keep definitions and examples of kept labels
        return [to_yaml_value(specs[n]) if n in specs else n for n in names]
    if key in ("diversity.personas", "diversity.tones"):
        return _parse_shares(str(value))
    if key == "task.edge_cases":
        return [x.strip() for x in str(value).splitlines() if x.strip()]
    if key == "quality.language":
        return value or None
    if key == "diversity.difficulty":
        return {k: float(v) for k, v in value.items() if float(v) > 0}
    return value


def apply_values(path: str | Path, values: dict[str, Any]) -> tuple[RunConfig, str]:
    """The config at `path` with `values` applied (only those that changed), validated; the YAML
    text keeps every comment and the order of the file. Raises ConfigError naming the field."""
    path = Path(path)
    cfg, doc = load_config(path)
    before = form_values(cfg)
    changed = [k for k, v in values.items() if before.get(k) != v]
    for key in changed:
        _set_dotted(doc, key, _to_yaml(key, values[key], cfg))
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    with tempfile.TemporaryDirectory() as tmp:  # validate exactly what would be saved
        probe = Path(tmp) / path.name
        probe.write_text(buf.getvalue())
        try:
            new_cfg, new_doc = load_config(probe)
        except ConfigError as e:
            raise ConfigError(str(e).replace(str(probe), str(path))) from None
    return new_cfg, buf.getvalue()


def save(path: str | Path, values: dict[str, Any]) -> RunConfig:
    cfg, text = apply_values(path, values)
    write_atomic(Path(path), text)
    return cfg


def diff(old_text: str, new_text: str, old_name: str = "parent", new_name: str = "this run") -> str:
    lines = difflib.unified_diff(
        old_text.splitlines(), new_text.splitlines(), fromfile=old_name, tofile=new_name, lineterm="", n=1
    )
    return "\n".join(x for x in lines if not re.match(r"^[-+]\s*#", x))  # value changes, not comment moves


def preview(cfg: RunConfig, seeds: pd.DataFrame, labels: list[str], llm, per_label: int = 3, train_counts=None):
    """The first `per_label` rows of 01_prompts' plan for each label, generated now. They are the
    same requests 01 sends, so 01 answers them from the cache."""
    plan = prompts.generation_requests(cfg, seeds, labels, train_counts)
    plan = plan[plan.groupby("label").cumcount() < per_label].reset_index(drop=True)
    results = llm.generate(list(plan["request"]), desc="00 preview")
    plan["text"] = [
        prompts.clean_text(r[0]["text"]) if not r[0]["error"] else f"(error: {r[0]['error']})" for r in results
    ]
    cells = [c for c in prompts.GRID if plan[c].notna().any()]
    return plan[["label", *cells, "text"]]


def config_form(path: str | Path, seeds=None, labels=None, llm=None, parent_text: str | None = None):
    """An ipywidgets form over the config file at `path`: edit, preview, diff, save."""
    path = Path(path)
    cfg, _ = load_config(path)
    v = form_values(cfg)
    area = dict(layout=w.Layout(width="420px", height="90px"))
    style = {"description_width": "160px"}
    boxes = {
        "task.labels": w.Textarea(v["task.labels"], description="labels (one per line)", style=style, **area),
        "sampling.rows_per_label": w.BoundedIntText(
            v["sampling.rows_per_label"], min=1, max=100000, description="rows per label", style=style
        ),
        "data.seeds_per_label": w.BoundedIntText(
            v["data.seeds_per_label"], min=1, max=50, description="seeds per label", style=style
        ),
        "prompts.temperature": w.FloatSlider(
            v["prompts.temperature"], min=0, max=2, step=0.05, description="input temperature", style=style
        ),
        "prompts.top_p": w.FloatSlider(
            v["prompts.top_p"], min=0.05, max=1, step=0.05, description="input top-p", style=style
        ),
        "responses.temperature": w.FloatSlider(
            v["responses.temperature"], min=0, max=2, step=0.05, description="response temperature", style=style
        ),
        "diversity.personas": w.Textarea(
            v["diversity.personas"], description="personas (name: share)", style=style, **area
        ),
        "diversity.tones": w.Textarea(v["diversity.tones"], description="tones (name: share)", style=style, **area),
        "task.edge_cases": w.Textarea(v["task.edge_cases"], description="edge cases", style=style, **area),
        "diversity.edge_case_share": w.FloatSlider(
            v["diversity.edge_case_share"], min=0, max=1, step=0.05, description="edge-case share", style=style
        ),
        "quality.min_chars": w.BoundedIntText(
            v["quality.min_chars"], min=0, max=100000, description="min chars", style=style
        ),
        "quality.max_chars": w.BoundedIntText(
            v["quality.max_chars"], min=1, max=100000, description="max chars", style=style
        ),
        "quality.language": w.Text(v["quality.language"], description="language (ISO code)", style=style),
        "quality.pii": w.Dropdown(
            options=["redact", "reject", "allow"], value=v["quality.pii"], description="PII", style=style
        ),
        "quality.profanity": w.Dropdown(
            options=["reject", "allow"], value=v["quality.profanity"], description="profanity", style=style
        ),
    }
    diff_sliders = {
        k: w.FloatSlider(
            v["diversity.difficulty"].get(k, 0.0), min=0, max=1, step=0.05, description=f"difficulty: {k}", style=style
        )
        for k in ("easy", "medium", "hard")
    }
    out = w.Output()

    def values() -> dict:
        vals = {k: b.value for k, b in boxes.items()}
        vals["diversity.difficulty"] = {k: s.value for k, s in diff_sliders.items()}
        return vals

    def on_save(_):
        out.clear_output()
        with out:
            try:
                new = save(path, values())
                out.append_stdout(f"saved {path}\n")
                if parent_text is not None:
                    out.append_stdout(
                        (diff(parent_text, dump_config(new)) or "no change against the parent run") + "\n"
                    )
            except ConfigError as e:
                out.append_stdout(f"not saved: {e}\n")

    def on_preview(_):
        out.clear_output()
        with out:
            try:
                new, _ = apply_values(path, values())
            except ConfigError as e:
                out.append_stdout(f"invalid: {e}\n")
                return
            if llm is None or seeds is None:
                out.append_stdout("preview needs seeds and an LLM (open the form from 00_task)\n")
                return
            names = new.task.label_names() or labels
            display(preview(new, seeds[seeds["label"].isin(names)], names, llm))

    save_b, prev_b = w.Button(description="Save", button_style="primary"), w.Button(description="Preview 3 per label")
    save_b.on_click(on_save)
    prev_b.on_click(on_preview)
    return w.VBox([w.HTML(f"<b>{path}</b>"), *boxes.values(), *diff_sliders.values(), w.HBox([prev_b, save_b]), out])
