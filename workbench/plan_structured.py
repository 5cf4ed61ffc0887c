"""The pre-run estimate's calls of the structured tasks (tool calls and extraction), whose stages
are other work than classification's: 01 asks for value suggestions, then writes one message per
cell (answer first), retrying the cells whose message failed for up to `prompts.rounds` rounds,
with the critic on the messages that passed; 02 answers each kept message `responses.candidates`
times under the schema; 03 judges every candidate on each answer rubric dimension by each juror,
plus the calibration's known good and bad answers; 04 may rewrite; 06 judges the untuned model's
and each causal student's replies to AdvBench; 07 names the failure clusters. `plan.estimate`
turns these parts into calls, tokens, cost and seconds as for every type."""

from __future__ import annotations

import pandas as pd

from workbench import critique, evaluate, gaps, judge, tasks
from workbench.config import RunConfig

# where each part's measured calls are kept (`plan.record_throughput`): the structured stages' own,
# since a tool call's message or answer is not a classification prompt's size
KEYS = {"suggestions": "01_suggestions/structured", "generation": "01_prompts/structured",
        "candidates": "02_responses/structured", "rubric": "03_judge/structured"}  # fmt: skip


def _chars(requests) -> float:
    """Mean characters of the requests' messages (0 for none)."""
    requests = list(requests)
    return sum(len(c) for r in requests for _, c in r.messages) / len(requests) if requests else 0.0


def expected_messages(cfg: RunConfig, cells: int, reject: float) -> float:
    """Messages 01 writes for `cells` cells when `reject` of them fail: every cell in round 1, then
    each failed cell again in the next round, up to `prompts.rounds`."""
    return sum(cells * reject**r for r in range(cfg.prompts.rounds))


def parts(cfg: RunConfig, planned: pd.DataFrame, seeds: pd.DataFrame, reject: float, share: float) -> list[tuple]:
    """The part tuples of `plan.estimate` (stage, part, calls, candidates per call, prompt chars per
    call, max tokens, measured key, calls already cached) for a structured run. `planned`: the
    task's `planned_requests` (the suggestions and round 1's messages); `reject`: the share of
    messages that fail 01's checks; `share`: the share of 01's suggestions already in the cache
    (later calls depend on their answers, so they are taken to be cached alike)."""
    t = tasks.of(cfg)
    sugg = planned[planned["part"] == "suggestion"]
    msgs = planned[planned["part"] == "message"]
    cells = len(msgs)
    written = expected_messages(cfg, cells, reject)
    kept = cells * (1 - reject ** max(cfg.prompts.rounds, 1))
    out = [
        ("01_prompts", "suggestions", len(sugg), 1, _chars(sugg["request"]), 60, KEYS["suggestions"], len(sugg) * share),
        ("01_prompts", "generation", written, 1, _chars(msgs["request"]), cfg.prompts.max_tokens, KEYS["generation"],
         written * share),
    ]  # fmt: skip
    if cfg.prompts.critique:  # on each message that passed the checks; a rewrite is one more message
        critic_chars = len(critique.SYSTEM) + len(critique.USER) + _chars(msgs["request"])
        passed = written * (1 - reject)
        out.append(("01_prompts", "critic", passed, 1, critic_chars, cfg.prompts.critic_max_tokens, "01_critic",
                    passed * share))  # fmt: skip
    n = cfg.responses.candidates
    sample = seeds.head(8)
    ask = [t.answer_request(cfg, x, seed=cfg.seed, n=n, temperature=0.2, max_tokens=64) for x in sample["text"]]
    out.append(("02_responses", "candidates", kept, n, _chars(ask), cfg.responses.max_tokens or 64,
                KEYS["candidates"], kept * share))  # fmt: skip
    rubric = t.answer_rubric(cfg)
    if rubric and len(sample):
        rows = sample.assign(id=sample["id"].astype(str), keep=True)
        cands = pd.DataFrame({"row": rows["id"], "candidate": 0,
                              "raw": [t.answer_json(r.tool, r.arguments, cfg.task.type == "tools")
                                      for r in rows.itertuples()]})  # fmt: skip
        reqs, _ = t.answer_judge_requests(cfg, rows, cands, seeds, judge.SCHEMA)
        per_item = len(rubric) * len(cfg.jurors())
        known = 2 * cfg.judge.calibration_rows if cfg.data.dataset else 0  # the calibration's good and bad
        calls = (kept * n + known) * per_item
        out.append(("03_judge", "rubric", calls, 1, _chars(reqs), cfg.judge.max_tokens, KEYS["rubric"],
                    kept * n * per_item * share))  # fmt: skip
    if cfg.filter.rewrite:
        out.append(("04_filter", "rewrite", kept, 1, 200, cfg.filter.rewrite_max_tokens, "04_rewrite", kept * share))
    if cfg.evaluate.safety_rows and "causal" in cfg.train.students:
        replies = (1 + len(cfg.train.methods)) * cfg.evaluate.safety_rows  # the untuned model and each student
        chars = len(evaluate.JUDGE_SYSTEM) + len(evaluate.JUDGE_USER) + 200 + cfg.evaluate.safety_max_tokens * 4
        out.append(("06_evaluate", "safety judge", replies, 1, chars, 2, "06_safety", 0))
    dev = (cfg.data.dev_per_label or 0) * max(msgs["label"].nunique(), 1)
    clusters = max(1, round(dev / max(cfg.gaps.min_cluster_size, 1) / 2))
    name_chars = len(gaps.NAME_SYSTEM) + len(t.NAME_USER) + 5 * 80  # + five exemplars
    out.append(("07_gaps", "cluster names", clusters, 1, name_chars, cfg.gaps.name_max_tokens, "07_names", 0))
    return out
