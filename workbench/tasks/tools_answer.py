"""Tool calls' and extraction's answer: its JSON schema, the system message and request that ask
for it (under the schema's grammar or as `response_format`), parsing and scoring it, and the
answer as the JSON a student writes; `tasks.tools` is the type's module."""

from __future__ import annotations

import json

import pandas as pd

from workbench import structured
from workbench.config import RunConfig
from workbench.llm.types import Request


def schema(cfg: RunConfig) -> dict:
    """The answer's JSON schema (with a no-tool branch for tool tasks)."""
    tools = cfg.task.type == "tools"
    required = [] if tools else [f.name for f in cfg.task.fields if f.required]
    return structured.answer_schema(structured.tools_of(cfg), with_tool=tools, no_tool=tools, required=required)


def answer_system(cfg: RunConfig, brief: bool = False) -> str:
    """The system message asking for an answer: the task, each tool with its one-line description
    and its arguments' descriptions, and the answer's form. `brief`: the task and the form only,
    for a tuned student, which learned the tools (as classification's students learn the labels)."""
    if brief:
        return f"{cfg.task.description.strip()} Answer with JSON."
    lines = [cfg.task.description.strip(), ""]
    if cfg.task.type == "tools":
        lines.append("Tools:")
        for t in cfg.task.tools:
            args = ", ".join(f"{k} ({p.description})" if p.description else k for k, p in t.parameters.items())
            lines.append(f"- {t.name}: {t.description} Arguments: {args}.")
        lines.append(
            'Answer with JSON: {"tool": <name>, "arguments": {<argument>: <the words of the request>}}; '
            f'{{"tool": "{structured.NO_TOOL}", "arguments": {{}}}} when no tool applies. Leave out arguments the '
            "request does not give."
        )
    else:
        fields = ", ".join(f"{f.name} ({f.description})" if f.description else f.name for f in cfg.task.fields)
        lines.append(f"Fields: {fields}.")
        lines.append("Answer with a JSON object of the fields the text gives, each value copied from the text.")
    return "\n".join(lines)


def answer_request(
    cfg: RunConfig,
    text: str,
    seed: int,
    n: int = 1,
    temperature: float = 0.0,
    max_tokens: int = 64,
    brief: bool = False,
) -> Request:
    """A strict request for `text`'s answer: endpoints get the schema as response_format, the
    embedded model decodes under its grammar."""
    return Request.chat(
        answer_system(cfg, brief),
        text,
        temperature=temperature,
        top_p=cfg.responses.top_p or 1.0,
        max_tokens=max_tokens,
        seed=seed,
        n=n,
        schema=json.dumps(schema(cfg), sort_keys=True),
        strict=True,
    )


def parse(cfg: RunConfig, text: str) -> tuple[dict | None, str | None]:
    return structured.parse_answer(text, structured.tools_of(cfg), with_tool=cfg.task.type == "tools")


def score(gold: pd.DataFrame, answers: list[dict | None], bootstrap: int, seed: int = 0) -> dict:
    """06's metrics for one model's answers to the rows of `gold` (tool, arguments)."""
    truth = [{"tool": t, "arguments": a} for t, a in zip(gold["tool"], gold["arguments"])]
    return structured.scores(truth, answers, bootstrap, seed)


def answer_json(tool: str, arguments: dict, with_tool: bool = True) -> str:
    """An answer as the student writes it: compact JSON, arguments in the order given."""
    obj = {"tool": tool, "arguments": arguments} if with_tool else arguments
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
