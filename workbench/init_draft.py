"""What `workbench init` asks the LLM for: the draft's JSON shape (labels, fields or tools, the
grid), the prompts that ask for it and repair it, and the reading of a reply that is JSON only in
part (`salvage`, `_validate_fields`)."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

# ---------------------------------------------------------------- what the LLM drafts


class DraftLabel(BaseModel):
    name: str = Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9_ .&/-]+$")
    definition: str = Field(min_length=10, max_length=300)


class DraftField(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: Literal["string", "integer", "number", "boolean", "date", "list"] = "string"
    description: str = ""


class DraftTool(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    description: str = Field(min_length=5)
    parameters: dict[str, Literal["string", "integer", "number", "boolean"]] = {}


_Short = Field(min_length=2, max_length=80)


class Draft(BaseModel):
    """The JSON object the drafting LLM returns."""

    name: str = Field(pattern=r"^[a-z0-9_]{3,40}$", description="snake_case task name")
    type: Literal["classification", "extraction", "tools", "reply", "summarization", "dialogue"]
    multi_label: bool = False
    domain: str = Field(min_length=3, max_length=120, description="the domain, e.g. 'online banking support'")
    style: str = Field(min_length=5, max_length=300, description="how users write: register, length")
    labels: list[DraftLabel] = Field(
        min_length=2, max_length=200, description="classification: the labels; reply: the topics messages are about"
    )
    fields: list[DraftField] = Field(min_length=1, max_length=50, description="extraction only")
    tools: list[DraftTool] = Field(max_length=20, description="tools and dialogue only")
    policies: list[str] = Field(
        max_length=12, description="reply: rules every reply keeps; summarization: rules every summary keeps"
    )
    must_refuse: list[str] = Field(max_length=12, description="reply only: requests the assistant must refuse")
    edge_cases: list[str] = Field(min_length=1, max_length=12, description="hard or unusual inputs to include")
    personas: list[str] = Field(min_length=2, max_length=8, description="who writes the inputs")
    tones: list[str] = Field(min_length=2, max_length=6, description="tones of voice")


EXAMPLE = {
    "name": "ticket_urgency",
    "type": "classification",
    "multi_label": False,
    "domain": "IT support tickets",
    "style": "short informal messages, sometimes with typos",
    "labels": [{"name": "urgent", "definition": "The user cannot work at all and needs help now."}],
    "fields": [],
    "tools": [],
    "policies": [],
    "must_refuse": [],
    "edge_cases": ["a ticket that mixes two problems"],
    "personas": ["a new employee", "a system administrator"],
    "tones": ["calm", "frustrated"],
}

SYSTEM = "You write configuration files for a synthetic-data tool. Reply with one JSON object and nothing else."
USER = (
    "Task description: {description}\n{labels}"
    "Write the JSON object for this task. Keys: name, type (classification, extraction, tools, reply, "
    "summarization or dialogue), multi_label, domain, style, labels (name and definition; reply: the topics), "
    "fields (extraction), tools (tools, dialogue), policies (reply; summarization: the summary's rules) and "
    "must_refuse (reply), edge_cases, personas, "
    "tones.\nExample for another task:\n{example}\nJSON:"
)
REPAIR = "These fields of your JSON are invalid:\n{errors}\nReply with the whole JSON object, corrected."
DEFINE = 'In one sentence, say which {domain} messages belong to the category "{label}". Output only the sentence.'


def salvage(text: str) -> dict:
    """The draft's keys that decode as JSON values, also from a reply cut off mid-object (small
    models often loop until max_tokens): the first value of each key wins."""
    dec = json.JSONDecoder()
    out: dict[str, Any] = {}
    for name in Draft.model_fields:
        for m in re.finditer(rf'"{name}"\s*:\s*', text or ""):
            try:
                out[name] = dec.raw_decode(text, m.end())[0]
                break
            except json.JSONDecodeError:
                continue
    return out


def _validate_fields(obj: Any) -> tuple[dict, dict[str, str]]:
    """Valid draft fields, and an error message per invalid or missing field. A value copied from
    the prompt's example is invalid: it describes another task."""
    if not isinstance(obj, dict):
        return {}, dict.fromkeys(Draft.model_fields, "missing (the reply is not a JSON object)")
    good, bad = {}, {}
    for name in Draft.model_fields:
        if name not in obj:
            bad[name] = "missing"
            continue
        if name not in ("type", "multi_label", "fields", "tools", "policies", "must_refuse") and obj[
            name
        ] == EXAMPLE.get(name):
            bad[name] = f"copied from the example, which is another task (got {json.dumps(obj[name])[:60]})"
            continue
        if (
            name == "labels"
            and isinstance(obj[name], list)
            and any(isinstance(x, dict) and x.get("name") == "urgent" for x in obj[name])
        ):
            bad[name] = "copied from the example, which is another task"
            continue
        try:  # type and Field constraints (lengths, patterns) of the one field
            checked = Draft.__pydantic_validator__.validate_assignment(Draft.model_construct(), name, obj[name])
            good[name] = getattr(checked, name)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first["loc"] if x != name)
            bad[name] = f"{first['msg']}{' at ' + loc if loc else ''} (got {json.dumps(obj[name])[:80]})"
    return good, bad
