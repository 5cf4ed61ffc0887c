"""Replies' 07 (summaries' too, in their words): a failure's signature and its words, and the
cluster namer's request (a name, a policy and a persona per cluster, under a JSON schema) with
the reading of its answers; `tasks.reply` is the type's module."""

from __future__ import annotations

import pandas as pd

from workbench.config import RunConfig
from workbench.llm.types import Request

# ---------------------------------------------------------------- 07: failures and what to change

SIGNATURES = {
    "lost": "the tuned assistant's reply lost to the untuned model's",
    "over_refused": "a legitimate request was refused",
    "not_refused": "a request that must be refused was answered",
    "low": "the reply scored low on {dim}",
}


def signature(lost: bool, over_refused: bool, low: list[str], not_refused: bool = False, extra: list[str] = ()) -> str:
    """A failure's signature, its kinds space-separated: `lost`, `over_refused`, `not_refused`,
    `low:<dimension>` per rubric dimension scored below `gaps.low_score`, then the task's own
    kinds (`extra`, from `checks`); '' when it is no failure."""
    parts = ["lost"] * lost + ["over_refused"] * over_refused + ["not_refused"] * not_refused
    return " ".join(parts + [f"low:{d}" for d in low] + list(extra))


def checks(items: pd.DataFrame) -> list[list[str]]:
    """The failure kinds a rule finds in each (text, reply) of `items`, besides the judge's: none
    for replies (summaries check their numbers and names against the source)."""
    return [[] for _ in range(len(items))]


def describe(sig: str, kinds: dict | None = None) -> str:
    """The signature in words (`kinds`: the task's SIGNATURES), for a prompt or a page."""
    out = []
    for s in sig.split():
        kind, _, dim = s.partition(":")
        out.append((kinds or SIGNATURES).get(kind, s).format(dim=dim.replace("_", " ")))
    return "; ".join(out)


GAP_SYSTEM = "You review where the customer support assistant of {domain} fails."
GAP_USER = (
    "The assistant's policies: {policies}.\nThese customer messages got poor replies ({why}):\n{examples}\n\n"
    "Answer in JSON with: name (3 to 6 words: what these messages have in common), policy (one new rule, under "
    "25 words, that would make the assistant reply to them better), persona (who writes such messages, 2 to 5 "
    'words). For example: {{"name": "{ex_name}", "policy": "{ex_policy}", "persona": "{ex_persona}"}}'
)
# the example answer in GAP_USER: an answer that repeats it is the example, not a finding (`read_gaps`)
GAP_EXAMPLE = {"name": "questions about a delayed parcel", "policy": "give the tracking steps before any promise",
               "persona": "an online shopper"}  # fmt: skip
GAP_SCHEMA = (
    '{"type": "object", "properties": {"name": {"type": "string", "maxLength": 80}, '
    '"policy": {"type": "string", "maxLength": 200}, "persona": {"type": "string", "maxLength": 60}}, '
    '"required": ["name", "policy", "persona"], "additionalProperties": false}'
)


def gap_requests(cfg: RunConfig, summary: pd.DataFrame, wording) -> list[Request]:
    """One request per cluster (exemplars: messages; dominant_predicted: its commonest signature) to
    the namer: the cluster's name, a policy and a persona it suggests (`GAP_SCHEMA`, decoded under
    the schema's grammar on the embedded model), in `wording` (`tasks.reply.Wording`)."""
    w = wording
    policies = "; ".join(cfg.task.policies) or "none yet"
    reqs = []
    for r in summary.itertuples():
        examples = "\n".join(f'- "{str(t)[: w.exemplar_chars]}"' for t in r.exemplars)
        user = w.gap_user.format(policies=policies, why=describe(str(r.dominant_predicted), w.signatures),
                                 examples=examples, **{f"ex_{k}": v for k, v in w.gap_example.items()})  # fmt: skip
        reqs.append(Request.chat(w.gap_system.format(domain=cfg.task.domain), user, temperature=0.0,
                                 max_tokens=cfg.gaps.name_max_tokens, seed=cfg.seed, schema=GAP_SCHEMA,
                                 strict=True))  # fmt: skip
    return reqs


def _overlap(a: str, b: str) -> float:
    """Jaccard overlap of two texts' lower-cased words."""
    x, y = set(a.lower().split()), set(b.lower().split())
    return len(x & y) / len(x | y) if x | y else 0.0


def read_gaps(parsed: list[dict | None], example: dict | None = None) -> list[dict]:
    """{name, policy, persona} per cluster from the namer's JSON answers. A field is None (so no
    edit and, for the name, the one built from topic and signature) when it is missing, blank or
    out of its word range (name 2-12 words, policy 3-40, persona 1-8); shares half its words with a
    field of `example` (default `GAP_EXAMPLE`: a copy of the prompt's example); is given to more than one cluster (it tells them apart
    from nothing); is a policy in the first person or a question (a reply, not a rule); is a name
    that is a question; or is a persona that repeats the name or the policy."""
    bounds = {"name": (2, 12), "policy": (3, 40), "persona": (1, 8)}
    out = []
    for p in parsed:
        p = p if isinstance(p, dict) else {}
        got = {}
        for key, (lo, hi) in bounds.items():
            v = " ".join(str(p.get(key) or "").split()).strip(" .\"'")
            copy = max(_overlap(v, x) for x in (example or GAP_EXAMPLE).values()) >= 0.5
            got[key] = v if lo <= len(v.split()) <= hi and not copy else None
        policy = " ".join(str(p.get("policy") or "").split()).strip(" .\"'").lower()
        if policy.startswith(("i ", "i'm", "i'd", "i'll", "i've")) or policy.endswith("?"):
            got["policy"] = None
        if (got["name"] or "").endswith("?"):  # a customer's question, not what the messages share
            got["name"] = None
        if got["persona"] and got["persona"].lower() in {(got["name"] or "").lower(), policy}:
            got["persona"] = None
        out.append(got)
    for key in bounds:
        seen = [g[key].lower() for g in out if g[key]]
        for g in out:
            if g[key] and seen.count(g[key].lower()) > 1:
                g[key] = None
    return out
