"""The pre-run estimate's calls of the text tasks (replies and summaries) beyond the stages every
type has: the multi-turn conversations' earlier turns in 01, the judge reading each reply, the
pairwise checks in 03, 06 and 07, GRPO's judge reward, the safety judge and the cluster names
(`plan.estimate` adds them)."""

from __future__ import annotations

from workbench import evaluate, tasks
from workbench.causal import TRAINER_DEFAULTS
from workbench.config import RunConfig

CHARS_PER_TOKEN = 4.0  # rough rule for English prompts; the estimate says it is rough


def reply_students(cfg: RunConfig) -> int:
    """The causal students 05 trains for replies (06 compares each with the untuned model): every
    method of `train.methods`, and `sft_no_refusals` beside `sft` when some messages must be refused."""
    methods = cfg.train.methods
    return len(methods) + int("sft" in methods and cfg.diversity.refusal_share > 0 and bool(cfg.task.must_refuse))


def earlier_turn_parts(cfg: RunConfig, n_gen: int, share: float) -> list[tuple]:
    """01's calls for multi-turn replies (`diversity.multi_turn_share`): per earlier turn, the
    customer's message (the next one quoted) and the assistant's reply (after the turns before it)."""
    t = tasks.of(cfg)
    if not hasattr(t, "customer_turns"):  # only replies write conversations (`diversity.multi_turn_share`)
        return []
    extra = sum(n - 1 for n in t.customer_turns(cfg, n_gen))
    if not extra:
        return []
    msg = cfg.prompts.max_tokens * CHARS_PER_TOKEN
    ask = len(t.EARLIER_USER) + msg
    answer = len(t.system_prompt(cfg)) + msg * 2 + cfg.responses.max_tokens * CHARS_PER_TOKEN
    return [("01_prompts", "earlier turns", extra, 1, ask, cfg.prompts.max_tokens, "01_prompts", extra * share),
            ("01_prompts", "earlier replies", extra, 1, answer, cfg.responses.max_tokens, "02_responses", extra * share)]  # fmt: skip


def text_task(cfg: RunConfig) -> bool:
    """Whether the task's 02-07 are replies' (replies and summaries: a text answer, judged)."""
    return tasks.of(cfg).FLOW == "text"


def input_chars(cfg: RunConfig) -> float:
    """Characters of one input a reply run's judge reads: a message (~60), or a source as long as
    01 may write it (`prompts.max_tokens`)."""
    return tasks.of(cfg).INPUT_CHARS_ESTIMATE or cfg.prompts.max_tokens * CHARS_PER_TOKEN


def reply_rating_chars(cfg: RunConfig) -> float:
    """Characters of one rating request on a reply: the judge's prompt, a criterion (~160), the real
    example (`judge.anchor`), the input (`input_chars`) and a reply of up to `responses.max_tokens`."""
    t = tasks.of(cfg)
    example = len(t.anchor(cfg)) if cfg.judge.anchor else 0
    reply_chars = cfg.responses.max_tokens * CHARS_PER_TOKEN
    return len(t.JUDGE_SYSTEM) + len(t.JUDGE_USER[0]) + 160 + example + input_chars(cfg) + reply_chars


def reply_parts(cfg: RunConfig, n_gen: int, n_labels: int, share: float) -> list[tuple]:
    """The judges' calls of a reply run beyond 03's rubric (in `estimate`'s part tuples): 03's
    pairwise check of each pair in both orders (at most one pair per message); 05's GRPO judge
    reward (every completion of every step, per rubric dimension and judge); 06's comparisons of
    each student with the untuned model in both orders and the refusal judge on AdvBench; 07's dev
    messages judged on the rubric and against the untuned model, and the cluster names."""
    judges = len(dict.fromkeys(cfg.roles.names("judge")))
    t = tasks.of(cfg)
    jurors, dims = len(cfg.jurors()), len(t.rubric(cfg))
    reply_chars = cfg.responses.max_tokens * CHARS_PER_TOKEN
    rate = reply_rating_chars(cfg)
    pair = len(t.PAIR_SYSTEM) + len(t.PAIR_USER) + 120 + input_chars(cfg) + 2 * reply_chars  # + policies
    mt = cfg.judge.max_tokens
    out = []
    if cfg.judge.pairwise:
        out.append(("03_judge", "pairwise", n_gen * 2 * judges, 1, pair, 2, "03_pairwise", n_gen * 2 * judges * share))
    if "grpo" in cfg.train.methods and "judge" in cfg.train.grpo_reward:
        g = {**TRAINER_DEFAULTS["grpo"], **cfg.train.grpo}
        calls = (g.get("max_steps") or 1) * g.get("per_device_train_batch_size", 8) * dims * judges
        out.append(("05_train", "judge reward", calls, 1, rate, mt, "05_reward", 0))
    students = reply_students(cfg)
    test = (cfg.evaluate.causal_test_per_label or cfg.data.test_per_label or 40) * n_labels
    out.append(("06_evaluate", "pairwise", students * test * 2 * judges, 1, pair, 2, "06_pairwise", 0))
    if cfg.evaluate.safety_rows:
        safety = (students + 1) * cfg.evaluate.safety_rows
        chars = len(evaluate.JUDGE_SYSTEM) + len(evaluate.JUDGE_USER) + 200 + cfg.evaluate.safety_max_tokens * 4
        out.append(("06_evaluate", "safety judge", safety, 1, chars, 2, "06_safety", 0))
    if "dev" in cfg.gaps.sources and cfg.train.methods:
        dev = (cfg.data.dev_per_label or 0) * n_labels
        out.append(("07_gaps", "dev pairwise", dev * 2 * judges, 1, pair, 2, "07_pairwise", 0))
        out.append(("07_gaps", "dev rubric", dev * dims * jurors, 1, rate, mt, "07_rubric", 0))
    clusters = max(1, round((cfg.data.dev_per_label or 0) * n_labels / max(cfg.gaps.min_cluster_size, 1) / 2))
    out.append(("07_gaps", "cluster names", clusters, 1, 600, cfg.gaps.name_max_tokens, "07_names", 0))
    return out
