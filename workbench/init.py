"""`workbench init`: from a one-sentence task description to a validated, commented config.

The LLM drafts the parts only a reader of the description can supply (name, type, domain, style,
label definitions, fields, tools, edge cases, personas, tones) as JSON against a schema taken from
pydantic models (endpoints get it as `response_format`; the embedded model sees it in the prompt).
Each field of the draft is validated on its own; the errors go back to the LLM for at most
`repair_rounds` rounds; what still fails is filled from documented defaults and listed field by
field in the report and in the file's header. Nothing is written unless the whole config validates.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from workbench import structured
from workbench.config import (
    ROW_SCHEMA,
    ConfigError,
    LLMConfig,
    RunConfig,
    dump_config,
    parse_overrides,
    task_kind,
)
from workbench.data import DATA_DIR, dataset_labels, describe_label, read_rows, seeds_from_file
from workbench.embed import embed
from workbench.files import cache_dir as default_cache
from workbench.files import write_atomic
from workbench.init_draft import (  # noqa: F401
    DEFINE,
    EXAMPLE,
    REPAIR,
    SYSTEM,
    USER,
    Draft,
    DraftField,
    DraftLabel,
    DraftTool,
    _validate_fields,
    salvage,
)
from workbench.llm import LLM, Request, clean_text

# ---------------------------------------------------------------- defaults, each documented

DEFAULT_PERSONAS = ["a first-time customer", "a long-standing customer", "a non-native English speaker"]
DEFAULT_TONES = ["neutral", "frustrated", "polite"]
DEFAULT_DIFFICULTY = {"easy": 0.3, "medium": 0.4, "hard": 0.3}
DEFAULT_STYLE = "Messages as real users type them: short, plain, sometimes with typos."
DIALOGUE_MULTI_TURN = 0.5  # a dialogue drafted as replies: the share of messages that end a conversation
REFUSAL_SHARE = 0.2  # reply drafts with must_refuse items: the share of messages that ask for one

# What the model must do, by the verb that says it: the earliest of these in the description
# wins ("Classify what people ask a virtual assistant" is classification, whatever it mentions).
# Only a verb among the description's first three words overrules the LLM's draft; a later match
# decides only where the draft named no valid type.
_TYPE_WORDS = [
    ("extraction", r"\bextract|\bpull out\b|\bparse\b|\bfields?\b"),
    ("summarization", r"\bsummar"),
    ("tools", r"\bcall (?:the right |a |one )?(?:tool|function)s?\b|\bfunction[- ]call|\bwhich tool\b"),
    ("reply", r"\brepl(?:y|ies)\b|\brespond|\banswer (?:customers|users|clients)"),
    ("dialogue", r"\bdialog|\bconversation|\bchat ?bot|\bassistant\b|\btool calls?\b|\bmulti-turn"),
    ("classification", r"\bclassif|\bcategori|\blabel|\bintent|\btriage|\broute\b|\brouting|\bdetect|\btag"),
]
_MULTI = r"multi-?label|several labels|multiple labels|all (?:labels |tags )?that apply|\btags\b"


class InitError(ConfigError):
    """Bad input to `workbench init`; the message names the argument or file and line."""


@dataclass
class Result:
    cfg: RunConfig
    text: str  # the commented YAML
    notes: list[str] = field(default_factory=list)  # field by field: where each value came from
    rounds: int = 0  # repair rounds used
    replies: list[str] = field(default_factory=list)  # the LLM's raw replies, in order
    unparseable: int = 0


UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]")


def check_description(description: str) -> str:
    d = " ".join((description or "").split())
    # letters of any script: "Классифицировать сообщения …" is 3 words; scripts written without spaces
    # (Chinese, Japanese, Thai, Lao, Khmer, Burmese) count a word per two characters
    unspaced = UNSPACED.findall(d)
    words = re.findall(r"[^\W\d_]{2,}", UNSPACED.sub(" ", d)) + [""] * (len(unspaced) // 2)
    if len(words) < 3:
        raise InitError(
            f"task description: got {description!r} ({len(words)} word{'s' * (len(words) != 1)}); expected a "
            'sentence saying what the model must do, e.g. "Classify support tickets by urgency"'
        )
    return d


def parse_labels(raw: str | list[str] | None) -> list[str] | None:
    if raw is None:
        return None
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    labels = [x.strip() for x in items]
    empty = [i + 1 for i, x in enumerate(labels) if not x]
    if empty:
        raise InitError(f"--labels: empty label at position {empty}; got {raw!r}")
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        where = {d: [i + 1 for i, x in enumerate(labels) if x == d] for d in dupes}
        raise InitError(f"--labels: duplicate labels {dupes} (positions {where})")
    if len(labels) < 2:
        raise InitError(f"--labels: got {labels}; a classification task needs at least two labels")
    return labels


def guess_type(description: str, labels: list[str] | None) -> tuple[str | None, bool, bool]:
    """(type, multi-label, whether the type comes from the description's leading verb)."""
    d = description.lower()
    multi = re.search(_MULTI, d) is not None
    found = [(m.start(), kind) for kind, rx in _TYPE_WORDS if (m := re.search(rx, d))]
    if found:
        at, kind = min(found)
        leading = len(d[:at].split()) < 3
        return kind, multi and kind == "classification", leading
    return ("classification", multi, False) if labels else (None, False, False)


def slug(description: str) -> str:
    words = [w for w in re.findall(r"[a-z0-9]+", description.lower()) if w not in {"the", "a", "an", "of", "by", "and"}]
    return "_".join(words[:4])[:40] or "task"


def find_dataset(labels: list[str] | None) -> str | None:
    """The dataset under data/ whose train split has every one of `labels`."""
    if not labels:
        return None
    for d in sorted(DATA_DIR.iterdir()):
        train = d / "train.csv"
        if train.is_file():
            try:
                known = set(read_rows(train)["label"])
            except ConfigError:
                continue
            if set(labels) <= known:
                return d.name
    return None


def _structured_rows(dataset: str | None, kind: str):
    """The train rows of a structured dataset (`--dataset`), for a tools or extraction draft."""
    if dataset is None or kind not in ("tools", "extraction"):
        return None
    p = Path(dataset)
    folder = p if p.is_absolute() or p.parts[0] in (".", "..") else DATA_DIR / p
    if not folder.is_dir():
        raise InitError(
            f"--dataset: folder {folder} not found; expected train.jsonl and test.jsonl (or the SNIPS files)"
        )
    return structured.read_split(folder, "train")


def _is_structured(dataset: str | None) -> bool:
    """Whether `--dataset` names a structured dataset (tools and arguments) `_structured_rows` reads."""
    try:
        return _structured_rows(dataset, "tools") is not None
    except (ConfigError, OSError, ValueError):  # not a folder of tool calls: a labelled CSV, or none
        return False


def _examples(values) -> str:
    common = [v for v, _ in Counter(str(x) for x in values).most_common(3)]
    return "e.g. " + ", ".join(common)


def _tools_from(rows) -> list[dict]:
    """Each tool of the dataset with its arguments, described by a real request of median length and
    its arguments' most common values (an LLM description would be a guess; these are facts)."""
    out = []
    for tool, args in structured.tool_arguments(rows).items():
        own = rows[rows["tool"] == tool]
        lengths = own["text"].str.len()
        typical = own["text"].iloc[int((lengths - lengths.median()).abs().argmin())]  # a request of median length
        params = {a: {"description": _examples(x[a] for x in own["arguments"] if a in x)} for a in args}
        out.append({"name": tool, "description": f'Requests like "{typical}"', "parameters": params})
    return out


def _fields_from(rows) -> list[dict]:
    """The fields of the dataset's (most frequent) tool, described by their most common values."""
    tool = rows["tool"].value_counts().index[0]
    own = rows[rows["tool"] == tool]
    args = structured.tool_arguments(own)[tool]
    return [
        {"name": a, "description": _examples(x[a] for x in own["arguments"] if a in x), "required": False} for a in args
    ]


def draft(
    description: str,
    labels: str | list[str] | None = None,
    seeds_file: str | Path | None = None,
    dataset: str | None = None,
    llm_overrides: list[str] | None = None,
    cache_dir: str | Path | None = None,
    repair_rounds: int = 2,
    seed: int = 0,
    llm: LLM | None = None,
) -> Result:
    """Draft a config; raise InitError on bad input (nothing is written here)."""
    description = check_description(description)
    label_list = parse_labels(labels)
    seeds = None
    if seeds_file is not None:
        seeds = seeds_from_file(seeds_file, label_list)
        label_list = label_list or sorted(seeds["label"].unique())
    if not label_list and dataset is not None and not _is_structured(dataset):
        try:
            found = dataset_labels(dataset)  # every label of its train split
        except ConfigError as e:
            raise InitError(f"--dataset: {e}") from None
        label_list = found if len(found) > 1 else None  # one kind of row (summaries' sources): no label set
    llm_cfg = _llm_config(llm_overrides)
    llm = llm or LLM(llm_cfg, cache_dir or default_cache())
    notes: list[str] = []
    rule_type, rule_multi, leading = guess_type(description, label_list)

    # 1. draft + repair rounds
    label_hint = f"Labels: {', '.join(label_list)}\n" if label_list else ""
    schema = json.dumps(Draft.model_json_schema())
    messages: list[tuple[str, str]] = [
        ("system", SYSTEM),
        ("user", USER.format(description=description, labels=label_hint, example=json.dumps(EXAMPLE))),
    ]
    good: dict[str, Any] = {}
    bad: dict[str, str] = {}
    res = Result(cfg=RunConfig(), text="")
    for round_ in range(repair_rounds + 1):
        req = Request(messages=tuple(messages), temperature=0.0, top_p=1.0, max_tokens=300, seed=seed, schema=schema)
        row = llm.generate([req], desc="00 init draft")[0][0]
        if row["error"]:
            raise InitError(f"drafting LLM ({llm_cfg.provider}/{llm_cfg.model}) failed: {row['error']}")
        res.replies.append(row["text"])
        parsed = row["parsed"]
        if parsed is None:
            res.unparseable += 1
            parsed = salvage(row["text"]) or None
        got, bad = _validate_fields(parsed)
        good.update(got)  # a field once valid stays; later rounds may improve others
        bad = {k: v for k, v in bad.items() if k not in good}
        if not _needed(bad, rule_type or good.get("type"), label_list):
            break
        if round_ < repair_rounds:
            res.rounds += 1
            errors = "\n".join(f"- {k}: {v}" for k, v in bad.items())
            messages += [("assistant", row["text"] or "(empty)"), ("user", REPAIR.format(errors=errors))]

    # 2. assemble, every value's origin noted
    def take(key: str, default: Any, why: str) -> Any:
        if key in good:
            notes.append(f"{key}: from the LLM's draft")
            return good[key]
        notes.append(f"{key}: {'draft ' + bad[key] if key in bad else 'not drafted'} → default {why}")
        return default

    kind = rule_type
    drafted = good.get("type")
    if kind is not None and (leading or drafted is None):
        if drafted not in (None, kind):
            notes.append(f"type: the draft said {drafted!r}; the description's verb says {kind!r}, kept")
        else:
            notes.append(f"type: {kind!r} from the description's wording")
    else:
        kind = take("type", kind or "classification", f"{kind or 'classification'!r}")
    multi = rule_multi if kind == "classification" else False
    if multi:  # drafted as what runs, and said so: a config `run` refuses is no start
        notes.append(
            "task.multi_label: the description asks for several labels per row, but multi-label classification "
            "does not run yet (`workbench run` refuses it); drafted single-label: each row gets its one best label"
        )
        multi = False
    multi_turn = 0.0
    if kind == "dialogue":
        has_tools = bool(good.get("tools")) or _is_structured(dataset)
        kind = "tools" if has_tools else "reply"
        if kind == "reply":
            multi_turn = DIALOGUE_MULTI_TURN
        notes.append(
            "type: 'dialogue' does not run yet (`workbench run` refuses it); drafted as "
            + (
                "'tools': one tool call per customer message, with the dialogue's tools"
                if has_tools
                else f"'reply': replies to the last message of conversations (diversity.multi_turn_share "
                f"{DIALOGUE_MULTI_TURN} of them multi-turn)"
            )
        )
    name = take("name", slug(description), f"{slug(description)!r} (from the description)")
    domain = take("domain", _domain(description), f"{_domain(description)!r} (from the description)")
    style = take("style", DEFAULT_STYLE, "(a generic style line)")
    task: dict[str, Any] = {
        "name": name,
        "type": kind,
        "multi_label": multi,
        "description": description,
        "domain": domain,
        "style": style,
    }
    if kind in ("classification", "reply"):  # a reply task's topics are labels: 01 plans messages per topic
        source = "--labels" if labels else "--seeds" if seeds is not None else "--dataset's train split"
        task["labels"] = _labels(label_list, good, bad, notes, llm, domain, seed, source)
    if kind in ("reply", "summarization"):  # a summary's policies are its rules, in the summarizer's instructions
        task["policies"] = take("policies", [], "none (the judge then checks the domain's usual care)") or []
    if kind == "reply":
        task["must_refuse"] = take("must_refuse", [], "none (no refusal examples are written)") or []
    structured_rows = _structured_rows(dataset, kind)
    if kind == "extraction" and structured_rows is not None:
        task["fields"] = _fields_from(structured_rows)
        notes.append(f"fields: the arguments of data.dataset {dataset!r}, described by example values")
    elif kind == "extraction":
        task["fields"] = [
            f.model_dump() for f in take("fields", [DraftField(name="value")], "one string field 'value'")
        ]
    if kind == "tools" and structured_rows is not None:
        task["tools"] = _tools_from(structured_rows)
        notes.append(
            f"tools: the tools and arguments of data.dataset {dataset!r}, described by example requests and values"
        )
    elif kind in ("dialogue", "tools"):
        tools = [t.model_dump() for t in take("tools", [], "no tools")]
        if kind == "tools" and not tools:
            raise InitError(
                "a tools task needs its tools: the draft named none; give --dataset (a folder with train.jsonl, or "
                "snips) to read them from, or write task.tools by hand"
            )
        task["tools"] = tools
    edge_cases = take("edge_cases", [], "none")
    if kind in ("extraction", "tools") and edge_cases:  # their grid has no edge-case cells yet
        notes.append(f"task.edge_cases: left out ({len(edge_cases)} drafted); extraction and tools have no such cells")
        edge_cases = []
    task["edge_cases"] = edge_cases
    personas = take("personas", DEFAULT_PERSONAS, str(DEFAULT_PERSONAS))
    tones = take("tones", DEFAULT_TONES, str(DEFAULT_TONES))
    dataset = dataset if dataset is not None else find_dataset(label_list)
    notes.append(
        f"data.dataset: {dataset!r}"
        + (
            " (its train split has every label)"
            if dataset and kind in ("classification", "reply")
            else " (given)"
            if dataset
            else " — no dataset under data/ has these labels: 05-07 cannot run"
        )
    )
    if kind in ("classification", "reply") and task["labels"] and seeds is not None:
        _negatives(task["labels"], seeds, llm.cache_dir)
        notes.append("task.labels[].negative: one seed of the most similar other label (MiniLM), as a near miss")
    data_section: dict[str, Any] = {"dataset": dataset, "seeds_file": str(seeds_file) if seeds_file else None}
    if kind == "extraction" and structured_rows is not None and structured_rows["tool"].nunique() > 1:
        data_section["subset"] = structured_rows["tool"].value_counts().index[0]
        notes.append(
            f"data.subset: {data_section['subset']!r}, the dataset's most frequent tool, whose arguments are the fields"
        )
    doc = {
        "task": task,
        "data": data_section,
        "diversity": {
            "personas": personas,
            "tones": tones,
            "difficulty": DEFAULT_DIFFICULTY,
            "edge_case_share": 0.2 if edge_cases else 0.0,
            # replies: a share of messages ask for what must be refused, so refusal examples reach training
            "refusal_share": REFUSAL_SHARE if task.get("must_refuse") else 0.0,
            "multi_turn_share": multi_turn,
        },
        "llm": llm_cfg.model_dump(),
    }
    try:
        cfg = RunConfig.model_validate(doc)
    except ValidationError as e:  # the defaults above are valid by construction: this is a bug
        raise InitError(f"drafted config does not validate (a workbench bug): {e}") from e
    res.cfg, res.notes = cfg, notes
    res.text = _header(description, cfg, res) + dump_config(cfg)
    return res


def _needed(bad: dict[str, str], kind: str | None, labels: list[str] | None) -> bool:
    """Whether a repair round could still help: some field this task type uses is invalid."""
    skip = {"labels"} if labels else set()
    skip |= {"fields"} if kind != "extraction" else set()
    skip |= {"tools"} if kind not in ("dialogue", "tools") else set()
    skip |= {"labels"} if kind not in (None, "classification", "reply") else set()
    skip |= {"policies", "must_refuse"} if kind != "reply" else set()  # a summary's rules are optional: no repair
    return any(k not in skip for k in bad)


def _domain(description: str) -> str:
    words = description.rstrip(".").split()
    return " ".join(words[1:]) if len(words) > 2 else description


def _labels(label_list, good, bad, notes, llm: LLM, domain: str, seed: int, source: str) -> list[dict]:
    drafted = {x.name: x.definition for x in good.get("labels", [])}
    if label_list is None:
        if "labels" not in good:
            raise InitError(
                f"no labels: the LLM's draft gave none that validate ({bad.get('labels', 'missing')}); "
                "pass --labels a,b,c, --seeds FILE or --dataset FOLDER"
            )
        label_list = list(drafted)
        notes.append(f"task.labels: {len(label_list)} labels from the LLM's draft")
    else:
        notes.append(f"task.labels: {len(label_list)} labels from {source}")
    missing = [x for x in label_list if x not in drafted]
    if missing:  # one short call per label the draft did not define
        reqs = [
            Request.chat(
                None,
                DEFINE.format(domain=domain, label=describe_label(x)),
                temperature=0.0,
                top_p=1.0,
                max_tokens=48,
                seed=seed,
            )
            for x in missing
        ]
        for x, rows in zip(missing, llm.generate(reqs, desc="00 init definitions")):
            text = clean_text(rows[0]["text"]) if not rows[0]["error"] else ""
            words = set(re.findall(r"[a-z]{3,}", describe_label(x).lower()))
            try:
                if words and not words & set(re.findall(r"[a-z]{3,}", text.lower())):
                    raise ValueError("does not mention the label")
                drafted[x] = DraftLabel(name=x, definition=text).definition
            except (ValidationError, ValueError):
                notes.append(
                    f"task.labels[{x}].definition: reply {text[:60]!r} unusable → none (the label name is used)"
                )
        notes.append(
            f"task.labels[].definition: {sum(x in drafted for x in missing)} of {len(missing)} written by "
            "one LLM call per label"
        )
    return [{"name": x, "definition": drafted.get(x)} for x in label_list]


def _negatives(labels: list[dict], seeds: pd.DataFrame, cache_dir) -> None:
    names = [x["name"] for x in labels]
    have = [x for x in names if (seeds["label"] == x).any()]
    if len(have) < 2:
        return
    v = embed([describe_label(x) for x in have], cache_dir)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    for i, x in enumerate(have):
        near = have[int(sim[i].argmax())]
        text = seeds.loc[seeds["label"] == near, "text"].iloc[0]
        next(lab for lab in labels if lab["name"] == x)["negative"] = [text]


def _llm_config(overrides: list[str] | None) -> LLMConfig:
    values = {}
    for key, value in parse_overrides(overrides):
        if not key.startswith("llm."):
            raise InitError(f"--set {key}: init takes llm.* settings only (edit the written file for the rest)")
        values[key.removeprefix("llm.")] = value
    try:
        return LLMConfig.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        raise InitError(f"--set llm.{err['loc'][0]}: {err['msg']} (received {err.get('input')!r})") from None


def _header(description: str, cfg: RunConfig, res: Result) -> str:
    kind = task_kind(cfg.task)
    lines = [
        f"Drafted by `workbench init` on {dt.date.today()} from: {description}",
        f"LLM: {cfg.llm.provider}/{cfg.llm.model}; repair rounds used: {res.rounds}; unparseable replies: "
        f"{res.unparseable} of {len(res.replies)}",
        f"A row ({kind}): {ROW_SCHEMA[kind]['row']}",
        f"Evaluated by: {ROW_SCHEMA[kind]['evaluated']}",
        "Where each drafted value came from:",
        *[f"  - {n}" for n in res.notes],
        "Every field below is enforced by a stage (`workbench check` lists which); edit freely.",
    ]
    return "".join(f"# {x}\n" for x in lines)


def write(res: Result, out: str | Path, force: bool = False) -> Path:
    out = Path(out)
    if out.exists() and not force:
        raise InitError(f"{out}: already exists; pass --force to replace it, or -o another path")
    write_atomic(out, res.text)
    return out
