"""The 00_task form: edit a config's labels, counts, temperatures and controls in JupyterLab,
preview sample rows, see the diff against the parent run, and save — comments kept.

`apply_values(path, values)` is the whole logic without widgets (tests call it): it sets dotted
values in the YAML document, validates the result as `workbench run` would, and returns the
new text, so a bad value is an error in the form and never a half-written file.
"""

from __future__ import annotations

import copy
import difflib
import io
import re
import tempfile
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd
from IPython.display import display
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from workbench import prompts
from workbench.config import ConfigError, RunConfig, _yaml, dump_config, load_config, to_yaml_value
from workbench.files import ROOT, write_atomic


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


def changed_fields(cfg: RunConfig, values: dict[str, Any]) -> list[str]:
    """The dotted fields whose form value differs from the config's (floats compared to 1e-9, so
    a value that went through a widget and back is not a change)."""
    before = form_values(cfg)

    def same(a, b) -> bool:
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
            return abs(float(a) - float(b)) < 1e-9
        return a == b

    return [k for k, v in values.items() if k in before and not same(before[k], v)]


def _merge_text(original: str, dumped: str, edited: str) -> str:
    """`original` with the lines that changed between `dumped` (the YAML library's writing of the
    untouched file) and `edited` (its writing after the form's edits) changed the same way: every
    line the user did not edit stays byte for byte as the file had it. When an edited line has no
    counterpart in `original` (the library wrote that part differently), the library's text."""
    if dumped == original:
        return edited
    a, d, e = original.splitlines(keepends=True), dumped.splitlines(keepends=True), edited.splitlines(keepends=True)
    to_original: dict[int, int] = {}  # line of `dumped` -> same line of `original`
    for block in difflib.SequenceMatcher(None, d, a, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            to_original[block.a + k] = block.b + k
    out, at = [], 0  # at: next line of `original` to copy
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, d, e, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        inside = [to_original.get(i) for i in range(i1, i2)]
        if inside:
            if None in inside or inside != list(range(inside[0], inside[0] + len(inside))):
                return edited
            start = inside[0]
        elif i1 == 0:
            start = 0
        elif i1 - 1 in to_original:
            start = to_original[i1 - 1] + 1
        else:
            return edited
        if start < at:
            return edited
        out += a[at:start] + e[j1:j2]
        at = start + len(inside)
    return "".join(out + a[at:])


def _form_error(e: ConfigError, probe: Path, path: Path) -> ConfigError:
    """A validation error about the form's values: it names the field, not a line of a file that
    is valid (the values are not in any file yet)."""
    text = re.sub(rf"{re.escape(str(probe))}:\d+: ", "", str(e)).replace(str(probe), str(path))
    return ConfigError(f"{text}\n(the form's values, not saved; {path} is unchanged)")


def _append(node: CommentedMap, key: str, value: Any) -> None:
    """Add `key` at the end of `node` where a person would: the blank lines and comments that
    followed the old last key (ruamel keeps them on it) move below the new one."""
    last = next(reversed(node), None) if len(node) else None
    node[key] = value
    item = node.ca.items.get(last) if last is not None else None
    if not item or len(item) < 3 or item[2] is None:
        return
    token = item[2]
    if not token.value.startswith("#"):
        keep, move = "", token.value  # only blank lines
    elif "\n\n" in token.value:  # the key's own comment lines stay; the blank lines after them move
        i = token.value.index("\n\n") + 1
        keep, move = token.value[:i], token.value[i:]
    else:
        return
    moved = copy.copy(token)
    moved.value = "\n" + move if keep else move
    if keep:
        token.value = keep
    else:
        item[2] = None
    _attach_after(node, key, moved)


def _attach_after(node: Any, key: Any, token: Any) -> None:
    """Put a comment token after the value of `node[key]`: ruamel writes a key's token after the
    key line, so for a list or mapping it goes on the value's deepest last element."""
    value = node[key]
    if isinstance(value, list | dict) and value:
        value = node[key] = (CommentedSeq if isinstance(value, list) else CommentedMap)(value)
        last = len(value) - 1 if isinstance(value, list) else next(reversed(value))
        if isinstance(value[last], list | dict) and value[last]:
            return _attach_after(value, last, token)
        if isinstance(value, list):
            value.ca.items[last] = [token, None]
        else:
            value.ca.items[last] = [None, None, token, None]
    else:
        node.ca.items[key] = [None, None, token, None]


def _assign(doc: CommentedMap, dotted: str, value: Any) -> None:
    """Set a dotted field in the YAML document, changing as little of its text as it can: a
    mapping or list is updated in place (its flow or block style kept), a new key goes at the end
    of its section, a new section at the end of the file."""
    *parents, key = dotted.split(".")
    node = doc
    for p in parents:
        if not isinstance(node.get(p), CommentedMap):
            _append(node, p, CommentedMap())
            if node is doc:
                doc.yaml_set_comment_before_after_key(p, before="\n")  # a blank line before a new section
        node = node[p]
    old = node.get(key)
    if isinstance(old, CommentedMap) and isinstance(value, dict):
        for k in [k for k in old if k not in value]:
            del old[k]
        for k, v in value.items():
            if k in old:
                old[k] = v
            else:
                _append(old, k, v)
    elif isinstance(old, CommentedSeq) and isinstance(value, list) and not old.ca.items:
        del old[:]
        old.extend(value)
    elif key in node:
        node[key] = value
    else:
        _append(node, key, value)


def apply_values(path: str | Path, values: dict[str, Any]) -> tuple[RunConfig, str]:
    """The config at `path` with `values` applied (only those that changed), validated, and the
    text to save: byte for byte the file's when nothing changed, else the file's text with only
    the edited lines changed (comments, order, blank lines and quoting kept). Raises ConfigError
    naming the field."""
    path = Path(path)
    original = path.read_text(encoding="utf-8")
    cfg, doc = load_config(path)
    changed = changed_fields(cfg, values)
    if not changed:
        return cfg, original
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    dumped = buf.getvalue()
    for key in changed:
        _assign(doc, key, _to_yaml(key, values[key], cfg))
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    text = _merge_text(original, dumped, buf.getvalue())
    with tempfile.TemporaryDirectory() as tmp:  # validate exactly what would be saved
        probe = Path(tmp) / path.name
        probe.write_text(text, encoding="utf-8")
        try:
            new_cfg, _ = load_config(probe)
        except ConfigError as e:
            raise _form_error(e, probe, path) from None
    return new_cfg, text


def shipped(path: str | Path) -> bool:
    """True for a config that ships with the workbench (its configs/ folder): the tests and the
    demo read those, so the form says so before it overwrites one."""
    try:
        Path(path).resolve().relative_to((ROOT / "configs").resolve())
    except ValueError:
        return False
    return True


def save(path: str | Path, values: dict[str, Any], to: str | Path | None = None) -> RunConfig:
    """Save the config at `path` with `values` applied to `to` (default: `path` itself). Nothing
    is written when the text would not change."""
    cfg, text = apply_values(path, values)
    target = Path(to or path)
    if not (target.is_file() and target.read_text(encoding="utf-8") == text):
        write_atomic(target, text)
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


def file_diff(old_text: str, new_text: str, old_name: str, new_name: str) -> str:
    """Every line a save would change, comments included (what `diff -u` would show)."""
    lines = difflib.unified_diff(
        old_text.splitlines(), new_text.splitlines(), fromfile=old_name, tofile=new_name, lineterm="", n=1
    )
    return "\n".join(lines)


def _number(value: float, minimum: float, maximum: float, description: str, style: dict) -> w.BoundedFloatText:
    # a text box, not a slider: a slider rounds to its step (0.34 became 0.35), and a rounded value
    # is an edit the user never made
    return w.BoundedFloatText(value, min=minimum, max=maximum, step=None, description=description, style=style)


def config_form(path: str | Path, seeds=None, labels=None, llm=None, parent_text: str | None = None):
    """An ipywidgets form over the config file at `path`: edit, preview, then review the diff and
    save to a file the user names (`path` by default; a config shipped with the workbench only
    after saying so). An untouched form saves nothing: the file stays byte for byte as it was.
    Paths are shown resolved, so the user sees which file a relative `config` names."""
    path = Path(path).expanduser().resolve()
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
        "prompts.temperature": _number(v["prompts.temperature"], 0, 2, "input temperature", style),
        "prompts.top_p": _number(v["prompts.top_p"], 0, 1, "input top-p", style),
        "responses.temperature": _number(v["responses.temperature"], 0, 2, "response temperature", style),
        "diversity.personas": w.Textarea(
            v["diversity.personas"], description="personas (name: share)", style=style, **area
        ),
        "diversity.tones": w.Textarea(v["diversity.tones"], description="tones (name: share)", style=style, **area),
        "task.edge_cases": w.Textarea(v["task.edge_cases"], description="edge cases", style=style, **area),
        "diversity.edge_case_share": _number(v["diversity.edge_case_share"], 0, 1, "edge-case share", style),
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
    difficulty = {
        k: _number(v["diversity.difficulty"].get(k, 0.0), 0, 1, f"difficulty: {k}", style)
        for k in ("easy", "medium", "hard")
    }
    save_to = w.Text(str(path), description="save to", style=style, layout=w.Layout(width="520px"))
    out = w.Output()
    confirm = w.HBox([])
    pending: dict[str, Any] = {}

    def values() -> dict:
        vals = {k: b.value for k, b in boxes.items()}
        vals["diversity.difficulty"] = {
            k: s.value for k, s in difficulty.items() if s.value or k in v["diversity.difficulty"]
        }
        return vals

    def on_review(_):
        out.outputs = ()
        confirm.children = ()
        pending.clear()
        try:
            _, text = apply_values(path, values())
        except ConfigError as e:
            out.append_stdout(f"not saved: {e}\n")
            return
        target = Path(save_to.value.strip() or path).expanduser().resolve()
        current = target.read_text(encoding="utf-8") if target.is_file() else None
        if current == text:
            out.append_stdout(f"no change: {target} already holds these values; nothing to save\n")
            return
        base = current if current is not None else path.read_text(encoding="utf-8")
        what = f"{target}" if current is not None else f"{target} (new file; the diff is against {path})"
        out.append_stdout(
            f"Saving would change {what}:\n{file_diff(base, text, str(path if current is None else target), str(target))}\n"
        )
        if shipped(target):
            out.append_stdout(
                f"\n{target} ships with the workbench: the tests and `make demo` read it. "
                "To keep it, type another file name in 'save to' and review again.\n"
            )
        pending.update(text=text, target=target, current=current)
        yes = w.Button(
            description=f"Save to {target.name}",
            button_style="warning" if shipped(target) else "primary",
            layout=w.Layout(width="auto"),
        )
        no = w.Button(description="Cancel")
        yes.on_click(on_confirm)
        no.on_click(on_cancel)
        confirm.children = (yes, no)

    def on_cancel(_):
        confirm.children, out.outputs = (), ()
        pending.clear()

    def on_confirm(_):
        confirm.children = ()
        if not pending:
            return
        target, text = pending["target"], pending["text"]
        now = target.read_text(encoding="utf-8") if target.is_file() else None
        out.outputs = ()
        if now != pending["current"]:
            out.append_stdout(f"not saved: {target} changed on disk since the review; review again\n")
            pending.clear()
            return
        write_atomic(target, text)
        pending.clear()
        out.append_stdout(f"saved {target}\n")
        if target.resolve() != path.resolve():
            out.append_stdout(f'this notebook still reads {path}: set config = "{target}" to run with it\n')
        if parent_text is not None:
            new, _ = load_config(target)
            out.append_stdout((diff(parent_text, dump_config(new)) or "no change against the parent run") + "\n")

    def on_preview(_):
        out.outputs = ()
        confirm.children = ()
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

    review_b = w.Button(description="Review and save…", button_style="primary")
    prev_b = w.Button(description="Preview 3 per label")
    review_b.on_click(on_review)
    prev_b.on_click(on_preview)
    box = w.VBox(
        [
            w.HTML(f"<b>{path}</b>"),
            *boxes.values(),
            *difficulty.values(),
            save_to,
            w.HBox([prev_b, review_b]),
            confirm,
            out,
        ]
    )
    box.buttons = {"preview": prev_b, "review": review_b, "confirm": confirm}  # for tests
    box.fields, box.save_to, box.out = (
        {**boxes, **{f"diversity.difficulty.{k}": s for k, s in difficulty.items()}},
        save_to,
        out,
    )
    return box
