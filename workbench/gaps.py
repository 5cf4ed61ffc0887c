"""Stage 07: what the student gets wrong, named, and turned into a reviewed config patch.

`failures(cfg, dev, predicted, synthetic)` → one row per failure with its `source`:
    dev        a real dev row (train split, disjoint from the seeds) the student misclassifies
    low_judge  a judged synthetic row (kept or not) the judge scored below `gaps.low_score`
    jury       a judged synthetic row the blind label jury gave another label (03's label_mismatch
               rejects, and kept rows it relabelled)
  columns: source, id, text, label (true / intended), predicted (student / jury)
`name_clusters(cfg, llm, summary)` → the cluster table plus an LLM-written name and one-line
    description per cluster (from its exemplars and dominant labels); a reply that does not parse
    gets a name built from the labels, and `name_source` says which.
`propose(cfg, clustered, summary, seeds, synthetic, vectors)` → the edits, one row each:
    more_rows   sampling.extra_rows.<label>: generate more inputs for a label the student confuses
    contrast    task.labels.<label>.negative: the confused label's seeds as near misses to avoid
    definition  task.labels.<label>.definition: a definition that names what the label is not
    phrasing    task.labels.<label>.positive: dev rows of the cluster unlike anything generated for
                the label, shown to the generator as examples
  each with the evidence (cluster, counts, exemplars) that motivated it. Replies' 07
  (flows/text_learn.py) proposes more_rows and phrasing by topic, and its own kinds:
    policy      task.policies: a rule the namer suggests for a cluster
    persona     diversity.personas: who writes the cluster's messages
    edge_case   task.edge_cases: what the cluster's messages share (edge_case_share turned on)
    refusals    diversity.refusal_share: raised when refusal examples fell short
`patch_yaml(edits, run)` / `load_patch(path)`: the commented YAML patch and back.
`apply(config_path, edits, labels)` → the next iteration's config text (comments kept).

Dev rows steer generation on purpose (that is the loop); the test split never does: nothing
here reads it.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from workbench.config import ConfigError, RunConfig, _yaml, check_expansion, load_config
from workbench.data import describe_label
from workbench.llm import Request

EDIT_COLUMNS = ["id", "kind", "cluster", "label", "other", "path", "value", "evidence"]
PATHS = {
    "more_rows": "sampling.extra_rows.{label}",
    "contrast": "task.labels.{label}.negative",
    "definition": "task.labels.{label}.definition",
    "phrasing": "task.labels.{label}.positive",
    # extraction and tools: known values of one argument (`label` is "Tool.argument", or the field's name;
    # the path is task.tools.<Tool>.parameters.<argument>.values or task.fields.<field>.values)
    "values": "task.tools.{label}.values",
    # replies (flows/text_learn.py): a line appended to a list, or the refusal share raised
    "policy": "task.policies",
    "persona": "diversity.personas",
    "edge_case": "task.edge_cases",
    "refusals": "diversity.refusal_share",
}
KINDS = tuple(PATHS)


def _texts(v: Any) -> bool:
    return (
        isinstance(v, list) and bool(v) and all(isinstance(x, str | int | float) and not isinstance(x, bool) for x in v)
    )


# what each kind's value is: a hand-edited patch is read against it (a string where a list is due
# would be taken letter by letter)
VALUE_OF = {
    "more_rows": (
        "a whole number of rows, at least 1",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    ),
    "contrast": ("a list of texts", _texts),
    "phrasing": ("a list of texts", _texts),
    "values": ("a list of values", _texts),
    "definition": ("one sentence (a string)", lambda v: isinstance(v, str) and bool(v.strip())),
    "policy": ("a line of text", lambda v: isinstance(v, str) and bool(v.strip())),
    "persona": ("a line of text", lambda v: isinstance(v, str) and bool(v.strip())),
    "edge_case": ("a line of text", lambda v: isinstance(v, str) and bool(v.strip())),
    "refusals": (
        "a share between 0 and 1",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1,
    ),
}
REFUSAL_STEP, REFUSAL_MAX = 0.1, 0.5  # a `refusals` edit raises diversity.refusal_share by a step, to a cap
EDGE_CASE_SHARE = 0.1  # an `edge_case` edit turns on diversity.edge_case_share at this share when it is 0

NAME_SYSTEM = "You name groups of {domain} messages that a classifier gets wrong."
NAME_USER = (
    "Customer messages (labelled '{true}', classified as '{pred}'):\n{examples}\n\n"
    "Write a short title (3 to 6 words) for what these messages have in common, then one sentence about them.\n"
    "Title:"
)
NAME_SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {"name": {"type": "string"}, "description": {"type": "string"}},
        "required": ["name", "description"],
    }
)


def failures(cfg: RunConfig, dev: pd.DataFrame, predicted, synthetic: pd.DataFrame | None) -> pd.DataFrame:
    """The rows 07 clusters, from the sources `gaps.sources` names (see the module docstring).

    Columns: `dev` has id, text, label (`predicted` its predicted labels); `synthetic` is 04's
    dataset (text, label, keep, judge_score, jury_label). Out, one row per failure: text, label,
    predicted, source."""
    cols = ["source", "id", "text", "label", "predicted"]
    frames = []
    if "dev" in cfg.gaps.sources:
        d = dev.assign(predicted=list(predicted))
        frames.append(d[d["predicted"] != d["label"]].assign(source="dev"))
    if synthetic is not None and len(synthetic):
        # every row the judge and jury saw (kept or rejected at 03-04): what the generator got wrong
        score = synthetic["judge_score"] if "judge_score" in synthetic else pd.Series(np.nan, index=synthetic.index)
        jury = synthetic["jury_label"] if "jury_label" in synthetic else pd.Series(None, index=synthetic.index)
        low = score.notna() & (score < cfg.gaps.low_score) & ("low_judge" in cfg.gaps.sources)
        relabelled = jury.notna() & (jury != synthetic["label"]) & ("jury" in cfg.gaps.sources)
        frames.append(synthetic[low].assign(source="low_judge", predicted=jury[low].fillna(synthetic["label"][low])))
        frames.append(synthetic[relabelled & ~low].assign(source="jury", predicted=jury[relabelled & ~low]))
    frames = [f[cols] for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def name_requests(cfg: RunConfig, summary: pd.DataFrame, wording: str = NAME_USER) -> list[Request]:
    """One request per cluster to the namer: its exemplars under `wording` (a task type's own:
    the structured tasks name a tool and an error signature, not two labels)."""
    reqs = []
    for r in summary.itertuples():
        examples = "\n".join(f"- {t}" for t in r.exemplars)
        user = wording.format(
            true=describe_label(r.dominant_true), pred=describe_label(r.dominant_predicted), examples=examples
        )
        reqs.append(
            Request.chat(
                NAME_SYSTEM.format(domain=cfg.task.domain),
                user,
                temperature=0.0,
                max_tokens=cfg.gaps.name_max_tokens,
                seed=cfg.seed,
                schema=NAME_SCHEMA,
            )
        )
    return reqs


def _clean(line: str) -> str:
    return re.sub(r"^[\s#*\-\"'`]+|[\s*\"'`]+$", "", line).strip()


def parse_name(text: str | None, parsed: dict | None) -> tuple[str, str] | None:
    """(name, description) from a reply: JSON {name, description} (endpoints get a schema), or
    'Title: … / Sentence: …' lines, or the first line (after a "here is a title:" preamble) and
    the next. None when there is no name of 2-12 words."""
    name = desc = None
    if isinstance(parsed, dict) and isinstance(parsed.get("name"), str):
        name, desc = parsed["name"], parsed.get("description") if isinstance(parsed.get("description"), str) else ""
    else:
        lines = [x for x in (text or "").splitlines() if x.strip()]
        for x in lines:
            key, _, rest = x.partition(":")
            if key.strip().lower() in ("title", "name") and rest.strip():
                name = name or rest
            elif key.strip().lower() in ("sentence", "description") and rest.strip():
                desc = desc or rest
        if name is None and lines:
            if lines[0].rstrip().endswith(":") and len(lines) > 1:  # "Here's a possible title:" then the title
                lines = lines[1:]
            name = lines[0]
            desc = desc or (lines[1] if len(lines) > 1 else "")
    name = _clean(name or "")
    if not 2 <= len(name.split()) <= 12 or len(name) > 100:
        return None
    return name, _clean(desc or "")[:240]


def name_clusters(cfg: RunConfig, llm, summary: pd.DataFrame, wording: str = NAME_USER) -> pd.DataFrame:
    """The LLM names each non-noise cluster from its exemplars (`wording`: `name_requests`'s); noise
    stays 'noise'.

    Columns: `summary` as clusters.summarize returns. Out: `summary` with name, description,
    name_raw and name_source (llm or template)."""
    out = summary.copy()
    out["name_source"], out["description"], out["name_raw"] = "template", "", None
    named = out[out["cluster"] >= 0]
    if named.empty:
        return out
    results = llm.generate(name_requests(cfg, named, wording), desc="07 cluster names")
    for i, cands in zip(named.index, results):
        c = cands[0]
        out.at[i, "name_raw"] = c["text"]
        got = None if c["error"] else parse_name(c["text"], c["parsed"])
        true, pred = describe_label(out.at[i, "dominant_true"]), describe_label(out.at[i, "dominant_predicted"])
        if got:
            out.at[i, "name"], out.at[i, "description"] = got
            out.at[i, "name_source"] = "llm"
        else:
            out.at[i, "name"] = f"{true} read as {pred}" if true != pred else f"weak {true} rows"
            out.at[i, "description"] = (
                f"{out.at[i, 'size']} rows, mostly {true}, that the student or jury took for {pred}."
                if true != pred
                else f"{out.at[i, 'size']} rows of {true} the judge scored low."
            )
    return out


def _evidence(s, clustered: pd.DataFrame, dev_counts: dict[str, int]) -> str:
    g = clustered[clustered["cluster"] == s.cluster]
    true, pred = s.dominant_true, s.dominant_predicted
    dev = g[(g["source"] == "dev") & (g["label"] == true)]
    text = f"cluster {s.cluster} '{s.name}': {s.size} failures ({s.sources})"  # sources: counted by summarize
    if len(dev):
        text += f"; {len(dev)} of {dev_counts.get(true, 0)} dev rows of {true} misread"
        k = int((dev["predicted"] == pred).sum())
        if k and pred != true:
            text += f", {k} as {pred}"
    return text


def propose(
    cfg: RunConfig,
    clustered: pd.DataFrame,
    summary: pd.DataFrame,
    seeds: pd.DataFrame,
    dev_counts: dict[str, int],
    failure_vectors: np.ndarray | None = None,
    kept: pd.DataFrame | None = None,
    kept_vectors: np.ndarray | None = None,
) -> pd.DataFrame:
    """Config edits from the clusters, largest first, at most `gaps.max_edits`; each label gets each
    kind of edit once (from its largest cluster). `failure_vectors` embed `clustered`'s rows and
    `kept_vectors` the kept synthetic rows `kept` (label column): 'phrasing' looks for dev rows far
    from every kept row of their label; without them it is not proposed."""
    extra = cfg.gaps.extra_rows or cfg.sampling.rows_per_label
    edits: list[dict] = []
    done: set[tuple[str, str]] = set()
    for s in summary[summary["cluster"] >= 0].sort_values(["size", "cluster"], ascending=[False, True]).itertuples():
        true, pred = s.dominant_true, s.dominant_predicted
        evidence = _evidence(s, clustered, dev_counts)
        found = []  # (kind, value, why, other)
        if pred != true:
            found.append(("more_rows", int(extra), f"{extra} more inputs for {true}.", pred))
            near = list(seeds.loc[seeds["label"] == pred, "text"].head(3))
            if near:
                found.append(
                    ("contrast", near, f"{pred}'s seeds shown to the generator of {true} as near misses.", pred)
                )
            found.append(
                (
                    "definition",
                    f"the customer's message is about {describe_label(true)}, not about {describe_label(pred)}",
                    f"the definition names the label it is confused with ({pred}).",
                    pred,
                )
            )
        else:  # weak rows the jury did not relabel: shown in the table, no edit (the judge alone is too weak)
            continue
        in_cluster = (clustered["cluster"] == s.cluster) & (clustered["source"] == "dev") & (clustered["label"] == true)
        dev = clustered[in_cluster]
        same = (kept["label"] == true).to_numpy() if kept is not None and kept_vectors is not None else None
        if len(dev) and failure_vectors is not None and same is not None and same.any():
            nearest = (failure_vectors[dev.index] @ kept_vectors[same].T).max(axis=1)
            far = dev.assign(nearest=nearest).sort_values("nearest").head(3)
            far = far[far["nearest"] < 0.8]
            if len(far):
                why = (
                    f"dev rows whose nearest generated {true} row has cosine {far['nearest'].max():.2f} or less: "
                    "phrasings the generator never produced, shown to it as examples."
                )
                found.append(("phrasing", list(far["text"]), why, None))
        for kind, value, why, other in found:
            if (kind, true) in done:  # each label gets each kind of edit once, from its largest cluster
                continue
            done.add((kind, true))
            edits.append(
                {
                    "kind": kind,
                    "cluster": int(s.cluster),
                    "label": true,
                    "other": other,
                    "path": PATHS[kind].format(label=true),
                    "value": value,
                    "evidence": f"{evidence}. {why}",
                }
            )
        if len(edits) >= cfg.gaps.max_edits:
            break
    edits = edits[: cfg.gaps.max_edits]
    for i, e in enumerate(edits):
        e["id"] = f"e{i + 1}"
    return pd.DataFrame(edits, columns=EDIT_COLUMNS)


def patch_yaml(edits: pd.DataFrame, run: str) -> str:
    """The commented YAML patch: one entry per edit with its evidence above it."""
    lines = [
        f"# Config patch proposed by 07_gaps from run {run}.",
        "# Each edit: what it changes (path, value) and the evidence that motivated it.",
        f"# Apply:  workbench iterate runs/<task>/{run} --accept e1,e3   (or --accept-all)",
        "edits:",
    ]
    if edits.empty:
        lines[-1] = "edits: []  # no failure cluster to act on"
    for e in edits.itertuples():
        lines.append(f"# {e.id} · {e.kind} · {e.evidence}")
        item = {"id": e.id, "kind": e.kind, "cluster": int(e.cluster), "label": e.label, "path": e.path}
        item["value"] = list(e.value) if isinstance(e.value, list | tuple | np.ndarray) else e.value
        if isinstance(item["value"], np.integer):
            item["value"] = int(item["value"])
        item["evidence"] = e.evidence
        body = json.dumps(item, ensure_ascii=False)  # JSON is YAML: one flow mapping per edit
        lines.append(f"- {body}")
    return "\n".join(lines) + "\n"


def load_patch(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no config patch; run 07_gaps on that run first")
    try:
        doc = _yaml().load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or getattr(e, "context", None) or type(e).__name__
        raise ConfigError(f"{path}{line}: YAML syntax error: {problem}; fix the file or run 07_gaps again") from None
    check_expansion(doc, str(path))
    edits = doc.get("edits") if isinstance(doc, dict) else None
    if not isinstance(edits, list):
        raise ConfigError(f"{path}: expected 'edits:' with a list of edits")
    out = []
    for n, e in enumerate(edits, 1):
        if not isinstance(e, dict) or e.get("kind") not in KINDS or not e.get("id") or not e.get("label"):
            raise ConfigError(f"{path}: edit {n} needs id, kind (one of {list(KINDS)}), label, value; got {e!r}")
        want, ok = VALUE_OF[e["kind"]]
        if not ok(e.get("value")):
            raise ConfigError(f"{path}: edit {e['id']} ({e['kind']}): value must be {want}; got {e.get('value')!r}")
        out.append(json.loads(json.dumps(e)))  # plain dicts and lists
    return out


def select(edits: list[dict], accept: list[str] | None, accept_all: bool) -> list[dict]:
    """The accepted edits: all, or those whose ids are listed (unknown ids are an error)."""
    if accept_all:
        return list(edits)
    known = [e["id"] for e in edits]
    unknown = [a for a in accept or [] if a not in known]
    if unknown:
        raise ConfigError(f"--accept: unknown edit ids {unknown}; the patch has {known}")
    return [e for e in edits if e["id"] in set(accept or [])]


def _add_values(task: CommentedMap, e: dict) -> None:
    """A `values` edit: known values appended to one tool argument's (`label` "Tool.argument") or one
    extraction field's (`label` the field) `values`, each once. 01 draws a request's values from them."""
    tool, _, arg = str(e["label"]).rpartition(".")
    if tool:
        spec = next((t for t in task.get("tools") or [] if t.get("name") == tool), None)
        params = spec.get("parameters") if spec is not None else None
        if params is None or arg not in params:
            raise ConfigError(f"edit {e['id']}: {tool}.{arg} is not an argument of task.tools")
        owner, key = params, arg
        if not isinstance(params[arg], dict):  # the shorthand `argument: type`
            params[arg] = CommentedMap(type=params[arg] or "string")
        spec = params[arg]
    else:
        fields = task.get("fields") or []
        names = [f if isinstance(f, str) else f.get("name") for f in fields]
        if arg not in names:
            raise ConfigError(f"edit {e['id']}: {arg!r} is not in task.fields")
        owner, key = fields, names.index(arg)
        if isinstance(fields[key], str):  # the shorthand `- name`
            fields[key] = CommentedMap(name=fields[key])
        spec = fields[key]
    have = [str(x) for x in spec.get("values") or []]
    spec["values"] = have + [str(x) for x in e["value"] if str(x) not in have]
    owner[key] = spec


def _add_reply_edit(doc: CommentedMap, task: CommentedMap, e: dict) -> None:
    """A replies' edit: a policy, persona or edge case appended (each once), or the refusal share set.
    An edge case turns diversity.edge_case_share on (EDGE_CASE_SHARE) where it was 0, so 01 writes it."""
    diversity = doc.setdefault("diversity", CommentedMap())
    if e["kind"] == "refusals":
        diversity["refusal_share"] = float(e["value"])
        return
    owner, key = (diversity, "personas") if e["kind"] == "persona" else (task, PATHS[e["kind"]].split(".")[-1])
    have = owner.get(key) or CommentedSeq()
    names = [x.get("name") if isinstance(x, dict) else x for x in have]
    if str(e["value"]) not in names:
        have.append(str(e["value"]))
    owner[key] = have
    if e["kind"] == "edge_case" and not diversity.get("edge_case_share"):
        diversity["edge_case_share"] = EDGE_CASE_SHARE


def apply(config_path: str | Path, edits: list[dict], labels: list[str], header: str = "") -> str:
    """The config at `config_path` with `edits` applied, as YAML text (its comments kept). A null
    `task.labels` becomes the explicit list of `labels` so single labels can carry definitions."""
    cfg, doc = load_config(config_path)

    task = doc.setdefault("task", CommentedMap())
    if any(e["kind"] in ("contrast", "definition", "phrasing") for e in edits):
        if task.get("labels") is None:
            task["labels"] = CommentedSeq(labels)
        specs = task["labels"]
    for e in edits:
        label, value = e["label"], e["value"]
        if e["kind"] == "more_rows":
            sampling = doc.setdefault("sampling", CommentedMap())
            extra = sampling.get("extra_rows") or CommentedMap()
            extra[label] = int(extra.get(label, 0)) + int(value)
            sampling["extra_rows"] = extra
            continue
        if e["kind"] == "values":
            _add_values(task, e)
            continue
        if e["kind"] in ("policy", "persona", "edge_case", "refusals"):
            _add_reply_edit(doc, task, e)
            continue
        idx = next((i for i, x in enumerate(specs) if (x if isinstance(x, str) else x.get("name")) == label), None)
        if idx is None:
            raise ConfigError(f"edit {e['id']}: label {label!r} is not in task.labels")
        spec = specs[idx] if not isinstance(specs[idx], str) else CommentedMap(name=specs[idx])
        if e["kind"] == "definition":
            spec["definition"] = value
        else:
            key = "negative" if e["kind"] == "contrast" else "positive"
            have = list(spec.get(key) or [])
            spec[key] = have + [x for x in value if x not in have]
        specs[idx] = spec

    buf = io.StringIO()
    _yaml().dump(doc, buf)
    return header + buf.getvalue()
