"""Structured tasks (extraction and tool calls): what a row is, the real data's two formats, the
answer's JSON schema, checks of an answer against its message, and slot-level scores.

A row is `id, text, tool, arguments`: `tool` names the tool the message calls for (`NO_TOOL`
when none does; an extraction row's tool is the one schema it fills) and `arguments` maps each
argument (a slot, a field) present in the message to its value. An answer is the JSON object
`{"tool": name, "arguments": {...}}` for tool calls, the arguments object alone for extraction.

A dataset folder holds either
- `train.jsonl` and `test.jsonl`, a row per line: `{"text": ..., "tool": ..., "arguments": {...}}`
  (tool calls; `"tool": null` when no tool applies) or `{"text": ..., "fields": {...}}`
  (extraction); or
- the SNIPS benchmark's files, `train_<Tool>_full.json` and `validate_<Tool>.json` (the
  benchmark's test set): per tool, rows of text pieces, a piece with an `entity` key being a
  slot's value.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.config import ConfigError
from workbench.data import dataset_dir

log = logging.getLogger(__name__)

NO_TOOL = "none"  # the tool of a request no tool serves
COLUMNS = ["id", "text", "tool", "arguments", "line"]
_VALUE = str | int | float | bool


# ---------------------------------------------------------------- reading real data


def decode(raw: bytes, path: Path) -> str:
    """A data file's text: UTF-8; else UTF-8 whose characters beyond the BMP were written as two
    encoded surrogates (CESU-8: SNIPS' `train_PlayMusic_full.json`, an emoji in a playlist name),
    recombined; else Latin-1, with a warning."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        text = raw.decode("utf-8", "surrogatepass")
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeError:
        log.warning("%s: neither UTF-8 nor CESU-8; read as Latin-1", path)
        return raw.decode("latin-1")


def _value_ok(v: Any) -> bool:
    return isinstance(v, _VALUE) and not (isinstance(v, float) and v != v)


def read_jsonl(path: Path) -> pd.DataFrame:
    """Rows of a structured JSONL file (see the module doc). Errors name the file, the line, what
    was found and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    rows = []
    for line, raw in enumerate(decode(path.read_bytes(), path).splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{line}"
        try:
            r = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(r, dict):
            raise ConfigError(
                f"{where}: expected an object with text and arguments (or fields); got {type(r).__name__}"
            )
        if not isinstance(r.get("text"), str) or not r["text"].strip():
            raise ConfigError(f"{where}: text must be a non-empty string; got {r.get('text')!r:.60}")
        if "fields" in r and ("arguments" in r or "tool" in r):
            raise ConfigError(f"{where}: either fields (extraction) or tool and arguments (tool calls), not both")
        if "fields" not in r and "arguments" not in r and "tool" not in r:
            raise ConfigError(
                f"{where}: expected keys text and arguments with tool (tool calls), or text and fields "
                f"(extraction); got {sorted(r)}"
            )
        args = r.get("fields", r.get("arguments", {}))
        tool = r.get("tool", "" if "fields" in r else None)
        if tool is None:
            tool = NO_TOOL
        if not isinstance(tool, str):
            raise ConfigError(f"{where}: tool must be a tool's name (a string) or null; got {tool!r:.60}")
        if not isinstance(args, dict):
            raise ConfigError(f"{where}: arguments must be an object of name: value; got {type(args).__name__}")
        bad = {k: v for k, v in args.items() if not _value_ok(v)}
        if bad:
            k, v = next(iter(bad.items()))
            raise ConfigError(
                f"{where}: argument {k!r} must be a string, number or boolean; got {type(v).__name__} {v!r:.60}"
            )
        if tool == NO_TOOL and args:
            raise ConfigError(f"{where}: a row without a tool has no arguments; got {sorted(args)}")
        rows.append((f"{path.stem}-{line}", r["text"].strip(), tool, dict(args), line))
    if not rows:
        raise ConfigError(f"{path}: no rows")
    return pd.DataFrame(rows, columns=COLUMNS)


_TOLD: set[str] = set()  # SNIPS files whose repeated slots were logged


def _snips_file(path: Path) -> pd.DataFrame:
    where = str(path)
    try:
        data = json.loads(decode(path.read_bytes(), path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}:{e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(data, dict) or len(data) != 1:
        raise ConfigError(f"{where}: expected {{<Tool>: [rows]}} (the SNIPS format); got {type(data).__name__}")
    ((tool, items),) = data.items()
    rows, repeated = [], 0
    for k, item in enumerate(items):
        pieces = item.get("data") if isinstance(item, dict) else None
        if not isinstance(pieces, list) or not all(
            isinstance(p, dict) and isinstance(p.get("text"), str) for p in pieces
        ):
            raise ConfigError(
                f"{where}: row {k}: expected {{'data': [{{'text': ..., 'entity'?: ...}}]}}; got {item!r:.80}"
            )
        text = "".join(p["text"] for p in pieces)
        args: dict[str, str] = {}
        for p in pieces:
            if "entity" in p:
                if p["entity"] in args:
                    repeated += 1  # a slot twice in one message: the first value is its argument
                    continue
                args[p["entity"]] = p["text"].strip()
        rows.append((f"{path.stem}-{k}", text.strip(), tool, args, k))
    if repeated and str(path) not in _TOLD:  # once per file and process, however often it is read
        _TOLD.add(str(path))
        log.info("%s: %d slots repeat within a message; the first value is kept", path.name, repeated)
    return pd.DataFrame(rows, columns=COLUMNS)


def snips_files(folder: Path, split: str) -> list[Path]:
    pattern = "train_*_full.json" if split == "train" else "validate_*.json"
    return sorted(Path(folder).glob(pattern))


def read_split(folder: Path, split: str) -> pd.DataFrame:
    """The `split` ("train" or "test") of a structured dataset folder, in either format."""
    folder = Path(folder)
    jsonl = folder / f"{split}.jsonl"
    if jsonl.is_file():
        return read_jsonl(jsonl)
    files = snips_files(folder, split)
    if not files:
        raise ConfigError(
            f"{folder}: no {split}.jsonl and no SNIPS files ({'train_<Tool>_full.json' if split == 'train' else 'validate_<Tool>.json'}); "
            "a structured dataset is a folder with train.jsonl and test.jsonl (docs/usage.md)"
        )
    return pd.concat([_snips_file(f) for f in files], ignore_index=True)


def tool_arguments(rows: pd.DataFrame) -> dict[str, list[str]]:
    """Each tool of `rows` with the arguments its rows use (sorted), no-tool rows left out."""
    out: dict[str, set[str]] = {}
    for tool, args in zip(rows["tool"], rows["arguments"]):
        if tool != NO_TOOL:
            out.setdefault(tool, set()).update(args)
    return {t: sorted(a) for t, a in sorted(out.items())}


# ---------------------------------------------------------------- the answer


JSON_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean", "date": "string"}
MAX_VALUE_CHARS = 60  # a value is a span of a short message: the grammar stops a runaway string here


def _params_schema(params: dict[str, str], required: list[str] = ()) -> dict:
    props = {}
    for name, typ in params.items():
        p: dict[str, Any] = {"type": JSON_TYPES.get(typ, "string")}
        if p["type"] == "string":
            p["minLength"], p["maxLength"] = 1, MAX_VALUE_CHARS  # an argument left out is absent, not ""
            if typ == "date":
                p["pattern"] = r"^\d{4}-\d{2}-\d{2}$"
        props[name] = p
    out = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    return out


def answer_schema(
    tools: dict[str, dict[str, str]], with_tool: bool = True, no_tool: bool = False, required: list[str] = ()
) -> dict:
    """The JSON schema of an answer: `{"tool": name, "arguments": {...}}`, one branch per tool
    (each with its own arguments, all optional: a message gives some), plus `{"tool": "none",
    "arguments": {}}` when `no_tool`; or, `with_tool` False (extraction), the one tool's arguments
    object alone, with the `required` fields."""
    if not with_tool:
        (params,) = tools.values()
        return _params_schema(params, required)
    branches = [
        {
            "type": "object",
            "properties": {"tool": {"const": name}, "arguments": _params_schema(params)},
            "required": ["tool", "arguments"],
            "additionalProperties": False,
        }
        for name, params in tools.items()
    ]
    if no_tool:
        branches.append(
            {
                "type": "object",
                "properties": {"tool": {"const": NO_TOOL}, "arguments": {"type": "object", "maxProperties": 0}},
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
        )
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def parse_answer(text: str, tools: dict[str, dict[str, str]], with_tool: bool = True) -> tuple[dict | None, str | None]:
    """(answer as {"tool", "arguments"}, None), or (None, why it is not one): not JSON, an unknown
    tool, an unknown argument, a value of the wrong type."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None, "not JSON"
    if not isinstance(obj, dict):
        return None, f"not an object: {type(obj).__name__}"
    if with_tool:
        tool, args = obj.get("tool"), obj.get("arguments", {})
        if tool is None or tool == NO_TOOL:
            tool = NO_TOOL
        elif tool not in tools:
            return None, f"unknown tool {tool!r}"
    else:
        (tool,), args = tools.keys(), obj
    if not isinstance(args, dict):
        return None, "arguments not an object"
    known = tools.get(tool, {})
    extra = [k for k in args if k not in known]
    if extra:
        return None, f"unknown arguments {extra} for {tool}"
    bad = [k for k, v in args.items() if not _value_ok(v)]
    if bad:
        return None, f"arguments {bad} not a string, number or boolean"
    return {"tool": tool, "arguments": {k: v for k, v in args.items() if v != ""}}, None


def norm(value: Any) -> str:
    """A value as compared: Unicode-normalised, case-folded, spaces collapsed, outer punctuation dropped."""
    s = unicodedata.normalize("NFKC", str(value)).casefold()
    s = re.sub(r"\s+", " ", s).strip()
    return s.strip(" .,;:!?\"'()[]")


def missing_values(text: str, arguments: dict) -> list[str]:
    """The arguments whose value does not appear in `text` (as words, case-insensitively)."""
    t = f" {norm(text)} "
    return [k for k, v in arguments.items() if norm(v) and norm(v) not in t]


# ---------------------------------------------------------------- scores


def _pairs(arguments: dict | None) -> Counter:
    return Counter((k, norm(v)) for k, v in (arguments or {}).items() if norm(v))


def row_counts(gold: dict, pred: dict | None) -> tuple[int, int, int]:
    """Slot true positives, false positives and false negatives of one answer: a (slot, value)
    pair counts once matched; a wrong value is both a false positive and a false negative."""
    g, p = _pairs(gold["arguments"]), _pairs(pred["arguments"] if pred else None)
    tp = sum((g & p).values())
    return tp, sum(p.values()) - tp, sum(g.values()) - tp


def _f1(c: np.ndarray) -> tuple[float, float, float]:
    tp, fp, fn = c.sum(axis=0) if c.ndim == 2 else c
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return float(p), float(r), float(2 * p * r / (p + r) if p + r else 0.0)


def exact(gold: dict, pred: dict | None) -> bool:
    return pred is not None and pred["tool"] == gold["tool"] and _pairs(pred["arguments"]) == _pairs(gold["arguments"])


def scores(gold: list[dict], pred: list[dict | None], bootstrap: int, seed: int = 0) -> dict:
    """Slot precision, recall and F1 (micro, over (slot, value) pairs), exact match of the whole
    answer, tool accuracy and the share of answers that parsed, each rate with a 95% bootstrap
    interval over rows."""
    counts = np.array([row_counts(g, p) for g, p in zip(gold, pred)], dtype=float).reshape(-1, 3)
    ex = np.array([exact(g, p) for g, p in zip(gold, pred)], dtype=float)
    tool = np.array([p is not None and p["tool"] == g["tool"] for g, p in zip(gold, pred)], dtype=float)
    parsed = np.array([p is not None for p in pred], dtype=float)
    p, r, f = _f1(counts)
    out = {
        "slot_precision": p,
        "slot_recall": r,
        "slot_f1": f,
        "exact_match": float(ex.mean()) if len(ex) else np.nan,
        "tool_accuracy": float(tool.mean()) if len(tool) else np.nan,
        "parsed": float(parsed.mean()) if len(parsed) else np.nan,
        "test_rows": len(gold),
    }
    rng = np.random.default_rng(seed)
    if bootstrap and len(gold):
        idx = rng.integers(0, len(gold), size=(bootstrap, len(gold)))
        for name, vals in (
            ("slot_f1", [_f1(counts[i])[2] for i in idx]),
            ("exact_match", ex[idx].mean(axis=1)),
            ("tool_accuracy", tool[idx].mean(axis=1)),
        ):
            out[f"{name}_lo"], out[f"{name}_hi"] = (float(x) for x in np.percentile(vals, [2.5, 97.5]))
    return out


def per_slot(gold: list[dict], pred: list[dict | None]) -> pd.DataFrame:
    """Precision, recall, F1 and support of each slot."""
    c: dict[str, list[int]] = {}
    for g, p in zip(gold, pred):
        gp, pp = _pairs(g["arguments"]), _pairs(p["arguments"] if p else None)
        for (slot, _), n in (gp & pp).items():
            c.setdefault(slot, [0, 0, 0])[0] += n
        for (slot, _), n in (pp - gp).items():
            c.setdefault(slot, [0, 0, 0])[1] += n
        for (slot, _), n in (gp - pp).items():
            c.setdefault(slot, [0, 0, 0])[2] += n
    rows = []
    for slot, (tp, fp, fn) in sorted(c.items()):
        p, r, f = _f1(np.array([tp, fp, fn], dtype=float))
        rows.append({"slot": slot, "precision": p, "recall": r, "f1": f, "support": tp + fn})
    return pd.DataFrame(rows, columns=["slot", "precision", "recall", "f1", "support"])


# ---------------------------------------------------------------- a run's real rows


def _split(cfg, split: str) -> pd.DataFrame:
    rows = read_split(dataset_dir(cfg), split)
    if cfg.data.subset is not None:
        known = sorted(rows["tool"].unique())
        if cfg.data.subset not in known:
            raise ConfigError(
                f"data.subset: no tool {cfg.data.subset!r} in data.dataset {cfg.data.dataset!r}; it has {known}"
            )
        rows = rows[rows["tool"] == cfg.data.subset]
    if cfg.task.type == "tools":
        names = {t.name for t in cfg.task.tools} | {NO_TOOL}
        rows = rows[rows["tool"].isin(names)]
    else:  # extraction: one schema, named as tools_of names it
        rows = rows.assign(tool=next(iter(tools_of(cfg))))
    check_rows(cfg, rows, f"data.dataset {cfg.data.dataset!r}, {split} split")
    return rows.drop(columns="line").reset_index(drop=True)


_TYPE_OK = {
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool)) or bool(re.fullmatch(r"[-+]?\d+", str(v).strip()))
    ),
    "number": lambda v: (
        (isinstance(v, int | float) and not isinstance(v, bool))
        or bool(re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", str(v).strip()))
    ),
    "boolean": lambda v: isinstance(v, bool) or str(v).strip().lower() in ("true", "false"),
    "date": lambda v: bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(v).strip())),
}


def check_rows(cfg, rows: pd.DataFrame, where: str) -> None:
    """Every row of a split (not only the ones sampled) against the declared tools or fields: no
    argument the config does not declare, each value of its declared type. Errors name the file's
    line (`line`), the argument, what was found and what was declared."""
    declared = tools_of(cfg)
    for r in rows.itertuples():
        if r.tool == NO_TOOL:
            continue
        types = declared.get(r.tool, {})
        extra = sorted(set(r.arguments) - set(types))
        if extra:
            raise ConfigError(
                f"{where}, line {r.line} ({r.id}): {'fields' if cfg.task.type == 'extraction' else r.tool + ' arguments'} "
                f"{extra} are not declared (declared: {sorted(types)}); declare them in the config or fix the row"
            )
        for name, value in r.arguments.items():
            ok = _TYPE_OK.get(types[name])
            if ok is not None and not ok(value):
                raise ConfigError(
                    f"{where}, line {r.line} ({r.id}): {name} = {value!r:.60} is not of its declared type "
                    f"{types[name]}; declare it as string, or fix the row"
                )


def train_samples(cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeds (`data.seeds_per_label` real train rows per tool) and dev (`data.dev_per_label` more,
    disjoint), chosen with `data.seed`."""
    d = cfg.data
    shuffled = _split(cfg, "train").sample(frac=1.0, random_state=d.seed)
    rank = shuffled.groupby("tool").cumcount()
    seeds = shuffled[rank < d.seeds_per_label]
    dev = shuffled[(rank >= d.seeds_per_label) & (rank < d.seeds_per_label + d.dev_per_label)]
    return (
        seeds.sort_values(["tool", "id"]).reset_index(drop=True),
        dev.sort_values(["tool", "id"]).reset_index(drop=True),
    )


def test_rows(cfg) -> pd.DataFrame:
    """The real test split (at most `data.test_per_label` rows per tool): 06 only."""
    rows = _split(cfg, "test")
    if cfg.data.test_per_label is not None:
        rows = rows.sample(frac=1.0, random_state=cfg.data.seed).groupby("tool").head(cfg.data.test_per_label)
    return rows.sort_values(["tool", "id"]).reset_index(drop=True)


def reference_rows(cfg, n: int | None) -> pd.DataFrame:
    """Real train rows for reference students: `n` per tool (a seeded sample), or all."""
    rows = _split(cfg, "train").sample(frac=1.0, random_state=cfg.data.seed)
    if n is not None:
        rows = rows.groupby("tool").head(n)
    return rows.sort_values(["tool", "id"]).reset_index(drop=True)


def tools_of(cfg) -> dict[str, dict[str, str]]:
    """Tool name → argument name → type: the config's tools, or for extraction its one schema."""
    if cfg.task.type == "extraction":
        name = cfg.data.subset or cfg.task.name
        return {name: {f.name: ("string" if f.type == "list" else f.type) for f in cfg.task.fields}}
    return {t.name: t.types() for t in cfg.task.tools}
