"""A scripted stand-in for `workbench.llm.LLM`: replies come from a function of the request, and
every request is kept, so tests can read what the workbench asked (e.g. the repair messages)."""

from __future__ import annotations

import json
from pathlib import Path

from workbench.llm import parse_json


class ScriptedLLM:
    def __init__(self, reply, cache_dir: Path):
        self.reply = reply  # (request, index of this call) -> str
        self.cache_dir = Path(cache_dir)
        self.requests = []
        self.stats = {"calls": 0, "cached": 0, "errors": 0, "retries": 0}  # as LLM's, for live views

    def generate(self, requests, desc: str = "", on_result=None):
        out = []
        for i, req in enumerate(requests):
            rows = []
            for c in range(req.n):  # n candidates: the reply function is called once per candidate
                text = self.reply(req, len(self.requests))
                row = {"text": text, "parsed": parse_json(text) if (req.json or req.schema) else None, "error": None}
                row.update(provider="scripted", model="scripted", seed=req.seed + c, candidate=c, cached=False)
                row.update(completion_tokens=len(text.split()), prompt_tokens=0, latency_s=0.0, ttft_s=None)
                row.update(finish_reason="stop")
                rows.append(row)
            self.requests.append(req)
            self.stats["calls"] += 1
            if on_result is not None:
                on_result(i, rows)
            out.append(rows)
        return out


def draft_reply(**fields) -> str:
    base = {
        "name": "ticket_urgency_x",
        "type": "classification",
        "multi_label": False,
        "domain": "IT helpdesk tickets",
        "style": "terse messages from busy staff",
        "labels": [],
        "fields": [],
        "tools": [],
        "edge_cases": ["a ticket about two problems at once"],
        "personas": ["an office worker", "a developer"],
        "tones": ["calm", "angry"],
    }
    base.update(fields)
    return json.dumps(base)
