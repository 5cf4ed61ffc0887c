"""The config file round trip: load YAML (comments kept) with errors that name file, line and field,
and write the fully resolved config back with every default filled in and explained.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, get_args
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError

from workbench.config.enforce import _get, enforcer, leaf_fields
from workbench.config.models import SECRET_PARAM
from workbench.config.schema import RunConfig
from workbench.config.task import ConfigError, LabelSpec, Share, TaskConfig, task_kind
from workbench.files import project_dir


def _yaml() -> YAML:
    y = YAML()  # round-trip: keeps comments, order and line numbers
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 110
    # None as `null`, as a person writes it (ruamel's default, an empty value, reads as a field left blank)
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


MAX_VALUES = 100_000  # values a YAML file may hold once its aliases are expanded


def check_expansion(doc: Any, source: str, limit: int = MAX_VALUES) -> None:
    """Refuse a document whose aliases expand to more than `limit` values (a few hundred bytes of
    nested aliases, a "billion laughs", would otherwise hang every reader of the config). The walk
    counts each value as often as an alias repeats it, and stops at the limit."""
    todo, seen = [doc], 0
    while todo:
        node = todo.pop()
        seen += 1
        if seen > limit:
            raise ConfigError(
                f"{source}: its aliases (&anchor, *alias) expand to more than {limit:,} values; a config needs a few "
                "hundred: write the repeated parts out, or fewer of them"
            )
        if isinstance(node, dict):
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)


def _line_of(doc: Any, loc: tuple) -> int | None:
    """1-based line of the deepest key of `loc` that exists in the YAML document."""
    node, line = doc, None
    for key in loc:
        if isinstance(node, CommentedMap) and key in node:
            try:
                line = node.lc.key(key)[0] + 1
            except KeyError:  # a key --set added: it has no line
                pass
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            line = node.lc.item(key)[0] + 1 if hasattr(node, "lc") else line
            node = node[key]
        else:
            break
    return line


def _held(ann: Any) -> type[BaseModel] | None:
    """The model a list, dict or optional annotation holds (list[ToolSpec], dict[str, ParamSpec])."""
    for a in get_args(ann):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        inner = _held(a)
        if inner is not None:
            return inner
    return None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The section model at `loc`, through lists and dicts of models (task.tools.3.parameters.city)."""
    model: type[BaseModel] = RunConfig
    pending: type[BaseModel] | None = None  # a container's model: the next key indexes into it
    for key in loc:
        if pending is not None:
            model, pending = pending, None
            continue
        field = model.model_fields.get(key) if isinstance(key, str) else None
        ann = field.annotation if field else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif (pending := _held(ann)) is None:
            return None
    return None if pending is not None else model


def _describe(err: dict, doc: Any, source: str, overrides: dict[tuple, str]) -> str:
    loc = tuple(err["loc"])
    if not loc:  # a check across sections: find the first field it names
        named = [f for f in leaf_fields() if f in err["msg"]]
        loc = tuple(named[0].split(".")) if named else ()
    dotted = ".".join(str(p) for p in loc)
    where = overrides.get(loc) or next((w for k, w in overrides.items() if k[: len(loc)] == loc), None)
    if where is None:
        line = _line_of(doc, loc)
        where = f"{source}:{line}" if line else source
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        valid = ", ".join(parent.model_fields) if parent else "?"
        return f"{where}: field '{dotted}': unknown key; valid keys here: {valid}"
    received = err.get("input")
    if "key" in str(loc[-1] if loc else "") and isinstance(received, str) and len(received) > 8:
        # llm.api_key_env holding the key itself: the message must not carry the secret on
        return (
            f"{where}: field '{dotted}': expected the name of an environment variable (letters, digits, _) that "
            f"holds the key, never the key; received a {len(received)}-character value starting {received[:3]!r}…"
            " Put the key in an environment variable and name that variable here."
        )
    if err["type"] == "value_error" and isinstance(received, dict):  # a whole section: the message says it
        return f"{where}: field '{dotted}': {err['msg'].removeprefix('Value error, ')}"
    return f"{where}: field '{dotted}': {err['msg']} (received {_unsecret(received)!r})"


def _unsecret(value: Any) -> Any:
    """`value` as an error may echo it: a key-like query parameter's value (key=, token=, sig=, …) in
    a URL or a query mapping shown as ***."""
    if isinstance(value, str) and "?" in value:
        base, _, query = value.partition("?")
        parts = [(k, "***" if SECRET_PARAM.match(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        return base + "?" + "&".join(f"{k}={v}" for k, v in parts)
    if isinstance(value, dict):
        return {k: "***" if isinstance(k, str) and SECRET_PARAM.match(k) else v for k, v in value.items()}
    return value


def _set_dotted(doc: CommentedMap, dotted: str, value: Any) -> tuple:
    parts = dotted.split(".")
    node = doc
    for p in parts[:-1]:
        if p not in node or not isinstance(node[p], dict):
            node[p] = CommentedMap()
        node = node[p]
    node[parts[-1]] = value
    return tuple(parts)


def parse_overrides(pairs: list[str] | None) -> list[tuple[str, Any]]:
    """`["a.b=3", "c=x"]` → `[("a.b", 3), ("c", "x")]`; values are read as YAML scalars."""
    out = []
    for pair in pairs or []:
        if "=" not in pair or not re.match(r"^[A-Za-z_][\w.]*=", pair):
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE with a dotted key, e.g. prompts.per_label=8")
        key, raw = pair.split("=", 1)
        value = YAML(typ="safe").load(raw) if raw.strip() else ""
        out.append((key, value))
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> tuple[RunConfig, CommentedMap]:
    """Read and validate a YAML config. Returns the model and the comment-keeping document."""
    path = Path(path)
    if path.is_dir():
        found = sorted(q.name for q in path.glob("*.y*ml"))
        raise ConfigError(f"{path}: a folder, not a config file; name one of its configs: {found[:8] or 'it has none'}")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    try:
        doc = _yaml().load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: YAML syntax error: {e.problem or e.context}") from e
    check_expansion(doc, str(path))
    if doc is None or (isinstance(doc, CommentedMap) and not doc):
        raise ConfigError(
            f"{path}: the config is empty; it needs at least a task section (task: name, description, labels). "
            '`workbench init "<what the model must do>" -o FILE` drafts one'
        )
    if not isinstance(doc, CommentedMap):
        raise ConfigError(f"{path}:1: expected a mapping of sections (task:, data:, …), got {type(doc).__name__}")
    where: dict[tuple, str] = {}
    for key, value in parse_overrides(overrides):
        where[_set_dotted(doc, key, value)] = f"--set {key}"
    try:
        cfg = RunConfig.model_validate(_plain(doc))
    except ValidationError as e:
        lines = [_describe(err, doc, str(path), where) for err in e.errors()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None
    problems = unenforced(cfg, doc, str(path), where)
    if problems:
        raise ConfigError("fields that nothing would enforce:\n  " + "\n  ".join(problems))
    _resolve_paths(cfg, path, where)
    return cfg, doc


def _resolve_paths(cfg: RunConfig, path: Path, overrides: dict[tuple, str]) -> None:
    """data.seeds_file and data.dataset relative to the config's folder (a --set value: to the
    current folder), made absolute, so a stage's kernel (whose folder is notebooks/) and a resumed
    run find the same files. A bare dataset name that is no folder there is looked for in the
    project's data/ (files.project_dir), else it names one bundled under the workbench's data/."""
    for name in ("seeds_file", "dataset"):
        value = getattr(cfg.data, name)
        if value is None or Path(value).expanduser().is_absolute():
            continue
        rel = Path(value).expanduser()
        base = Path.cwd() if ("data", name) in overrides else path.resolve().parent
        if name == "dataset" and rel.parts[0] not in (".", "..") and not (base / rel).is_dir():
            mine = project_dir(path) / "data" / rel
            bundled = Path(__file__).resolve().parents[2] / "data" / rel
            if ("data", name) not in overrides and mine.is_dir() and mine.resolve() != bundled.resolve():
                setattr(cfg.data, name, str(mine))
            continue  # e.g. "banking77": the bundled dataset
        setattr(cfg.data, name, str((base / rel).resolve()))


def unenforced(cfg: RunConfig, doc: CommentedMap, source: str, overrides: dict[tuple, str]) -> list[str]:
    """Fields whose value differs from the task type's default but that no stage enforces for this
    task type: an error, so a setting is never a silent no-op."""
    kind = task_kind(cfg.task)
    reset = {}
    for name, field in TaskConfig.model_fields.items():
        rule = enforcer(f"task.{name}")
        if rule and rule[3] is not None and kind not in rule[3]:
            reset[name] = field.get_default(call_default_factory=True)
    base = RunConfig(task=cfg.task.model_copy(update=reset))
    out = []
    for dotted in leaf_fields():
        if _get(cfg, dotted) == _get(base, dotted):
            continue
        rule = enforcer(dotted)
        if rule is not None and (rule[3] is None or kind in rule[3]):
            continue
        loc = tuple(dotted.split("."))
        where = overrides.get(loc) or f"{source}:{_line_of(doc, loc) or '?'}"
        kinds = ", ".join(rule[3]) if rule else "none"
        out.append(f"{where}: field '{dotted}': set, but no stage enforces it for {kind} (it applies to: {kinds})")
    return out


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


# ---------------------------------------------------------------- writing


def to_yaml_value(value: Any) -> Any:
    """Plain YAML data for a field value; a label or share with only a name is written as the bare name."""
    if isinstance(value, BaseModel):
        d = value.model_dump()
        extra = {k: v for k, v in d.items() if k != "name" and v != type(value).model_fields[k].default}
        return d["name"] if "name" in d and not extra and isinstance(value, LabelSpec | Share) else d
    if isinstance(value, list):
        return [to_yaml_value(v) for v in value]
    if isinstance(value, dict):
        return {k: to_yaml_value(v) for k, v in value.items()}
    return value


def _merge(
    model: BaseModel, doc: CommentedMap, indent: int, reasons: dict[str, str], prefix: str, derived: set[str]
) -> CommentedMap:
    """Write every field of `model` into `doc`, keeping existing comments and order;
    fields the document lacked are added with their help text (and any default's reason) as a comment."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        new = name not in doc
        if isinstance(value, BaseModel) and not isinstance(value, LabelSpec | Share):
            sub = doc.get(name)
            if not isinstance(sub, CommentedMap):
                sub = CommentedMap()
            doc[name] = _merge(value, sub, indent + 2, reasons, f"{prefix}{name}.", derived)
        else:
            plain = None if f"{prefix}{name}" in derived else to_yaml_value(value)
            if new or _plain(doc.get(name)) != plain:
                doc[name] = plain
        if new:
            note = field.description or ""
            if f"{prefix}{name}" in reasons:
                note += f"\n{reasons[prefix + name]}"
            if indent == 0:
                note = f"\n{'-' * 100}\n{note}"
            doc.yaml_set_comment_before_after_key(name, before=note, indent=indent)
    return doc


def dump_config(cfg: RunConfig, doc: CommentedMap | None = None) -> str:
    """YAML text of the fully resolved config, comments of `doc` kept, defaults explained."""
    out = _merge(cfg, doc if doc is not None else CommentedMap(), 0, cfg._reasons, "", cfg._derived)
    buf = io.StringIO()
    _yaml().dump(out, buf)
    return buf.getvalue()
