"""Replies: the assistant's reply to a user's message, under the config's policies (`task.type: reply`).

A row is a user's message about one of the task's topics (`task.labels`; Banking77's intents by
default), flagged `should_refuse` where 01 asked for a request the assistant must refuse
(`task.must_refuse`, `diversity.refusal_share`); its target is the assistant's reply. 00 and 01 are
classification's (the topics are its labels, the real messages its rows); this module owns what
differs from 02 on:

- 02: N candidate replies per message from the generator, under the assistant's system prompt
  (the domain, `task.policies`, what must be refused);
- 03: the judge on each (message, reply): each dimension of `judge.rubric` (default
  `REPLY_RUBRIC`) scored 1-5 with a rationale by every juror of `roles.judge`. Refusal quality
  is scored both ways: a refusal is what a `should_refuse` row needs, and a refusal of a
  legitimate request fails (over-refusal). Best-of-N is the candidate with the highest judge
  score; a DPO pair is best over worst when their scores differ by `judge.pair_margin` (ties make
  no pair). The calibration's known-good item is a message with a reply written to it, its
  known-bad one the same reply shown under another topic's message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from workbench.config import RUBRIC, RunConfig
from workbench.llm.types import Request, clean_text, history_turns
from workbench.quality import REFUSAL_PHRASES
from workbench.tasks import reply_gaps
from workbench.tasks.classification import PROMPT, check_data, dev, label_counts, labels, seeds, test  # noqa: F401
from workbench.tasks.reply_gaps import (  # noqa: F401 (07's hooks, this type's)
    GAP_EXAMPLE,
    GAP_SCHEMA,
    GAP_SYSTEM,
    GAP_USER,
    SIGNATURES,
    checks,
    describe,
    read_gaps,
    signature,
)

NOUNS = {"input": "message", "inputs": "messages", "output": "reply", "outputs": "replies"}  # on its pages
ROW_KEY = "label"  # the topic: rows are planned, balanced and sampled by it, as classification's labels
REFUSALS = True  # its answers may be refusals: where due (task.must_refuse) and over-refusals
LABEL_JURY = False  # the rubric jurors' spread is the disagreement queue (03)
INPUT_CHARS_ESTIMATE = 60  # a customer message: the estimate's size of one input the judge reads
FLOW = "text"  # its stages from 02 on: flows/text.py (00 and 01 are classification's)

REPLY_RUBRIC = ["helpfulness", "policy_compliance", "refusal_quality"]
# What the judge rates a reply on (the message is shown; `should_refuse` picks the refusal wording)
REPLY_CRITERIA = {
    "helpfulness": "the reply does what the customer asked, completely and usefully, or says exactly what the "
    "customer must do next",
    "correctness": "what the reply states is right for {domain}: no invented facts, fees, times or procedures",
    "policy_compliance": "the reply keeps to the assistant's policies: {policies}",
    "formatting": "it reads as a support reply: plain, polite and short, with no notes, placeholders or markup",
    "tool_usage": RUBRIC["tool_usage"],
}
REFUSE = (
    "this request must be refused ({why}): a good reply refuses it briefly and politely, says why, and offers "
    "a safe alternative; a reply that does what was asked fails"
)
ANSWER = (
    "this request is legitimate and must be answered: a reply that refuses it, or hedges instead of helping, "
    "fails; a reply that helps passes"
)
SYSTEM = "You are the customer support assistant of {domain}.{policies}{refuse} Reply in a few short sentences."
NO_POLICIES = "none beyond the domain's usual care"  # what the judge reads when task.policies is empty
INPUT_CHARS = None  # the most of an input a judge request shows (None: all of a message)
EXEMPLAR_CHARS = None  # the most of each cluster exemplar the namer reads
JUDGE_SYSTEM = "You are a strict reviewer of a support assistant's replies for {domain}."
JUDGE_USER = (
    (
        'Criterion: {criterion}.\nCustomer message: "{text}"\nAssistant reply: "{reply}"\n'
        "Score the reply 1 (fails) to 5 (fully meets), then give a one-sentence reason."
    ),
    (
        "Rate from 1 to 5 how well this support reply meets the criterion.\nCriterion: {criterion}.\n"
        'Customer message: "{text}"\nAssistant reply: "{reply}"\nReply with the rating, then one short sentence why.'
    ),
)


REWRITE = (
    "Rewrite this support reply {how}. Keep what it says, refuses and promises exactly; reply with the rewritten "
    'reply only.\nReply: "{text}"'
)


def rubric(cfg: RunConfig, default: list[str] = REPLY_RUBRIC) -> list[str]:
    """`judge.rubric`, or the task type's `default` when it is null."""
    return list(cfg.judge.rubric) if cfg.judge.rubric is not None else list(default)


def listed(head: str, items: list[str]) -> str:
    """' Head: a; b.' for a system prompt ('' for no items)."""
    return f" {head}: " + "; ".join(x.rstrip(".") for x in items) + "." if items else ""


def system_prompt(cfg: RunConfig) -> str:
    """The assistant's instructions: its domain, policies and what it must refuse."""
    t = cfg.task
    return SYSTEM.format(
        domain=t.domain, policies=listed("Policies", t.policies), refuse=listed("Refuse", t.must_refuse)
    )


def reply_requests(cfg: RunConfig, rows: pd.DataFrame) -> list[Request]:
    """02: one request per message for `responses.candidates` replies (each candidate its own seed),
    after the conversation's earlier turns where the row has them (`history`)."""
    r, system = cfg.responses, system_prompt(cfg)
    hist = rows["history"] if "history" in rows else [None] * len(rows)
    return [
        Request(
            messages=chat(system, h, text),
            temperature=r.temperature,
            top_p=r.top_p,
            max_tokens=r.max_tokens,
            seed=int(seed),
            n=r.candidates,
        )
        for text, seed, h in zip(rows["text"], rows["seed"], hist)
    ]


# ---------------------------------------------------------------- multi-turn: earlier turns (diversity.multi_turn_share)

EARLIER_USER = (
    'A customer of {domain} wrote this in a support chat: "{text}"\nWrite the message the same customer sent '
    "just before it in that chat, about the same matter, in their own words. Output only the message."
)


turns = history_turns  # a row's earlier turns from its `history` column (llm.types)


def chat(system: str | None, history, text: str) -> tuple[tuple[str, str], ...]:
    """The messages of a request: the system prompt, the earlier turns, then `text` as the customer's."""
    head = (("system", system),) if system else ()
    return head + tuple((t["role"], t["content"]) for t in turns(history)) + (("user", str(text)),)


def shown(text: str, history) -> str:
    """The message as a judge reads it: the earlier turns as a transcript, then the last message."""
    earlier = turns(history)
    if not earlier:
        return str(text)
    lines = "\n".join(f"{'Customer' if t['role'] == 'user' else 'Assistant'}: {t['content']}" for t in earlier)
    return f"(earlier in the chat:\n{lines}\n) Customer's last message: {text}"


def _checked(texts: list[str], check) -> list[tuple]:
    """(reason, redacted text) per text from `check` (None: every text passes as it is)."""
    if check is None or not texts:
        return [(None, None)] * len(texts)
    got = check(texts)
    return list(zip(got["reason"], got["redacted"]))


def customer_turns(cfg: RunConfig, n: int) -> list[int]:
    """Customer turns of each of `n` rows: `diversity.multi_turn_share` of them, spread evenly, are
    conversations of 2, 3, …, `task.max_turns` turns by turns; the others one message."""
    share, most = cfg.diversity.multi_turn_share, cfg.task.max_turns
    if share <= 0 or most < 2:
        return [1] * n
    multi = [int((i + 1) * share) > int(i * share) for i in range(n)]
    k = np.cumsum(multi) - 1
    return [2 + int(j) % (most - 1) if m else 1 for m, j in zip(multi, k)]


def histories(cfg: RunConfig, rows: pd.DataFrame, llm, check=None) -> pd.DataFrame:
    """01's conversations (`diversity.multi_turn_share`): each kept message is the last customer turn of
    a conversation of `customer_turns` turns. The generator writes the earlier customer messages
    backwards (each the message before the next one), then the assistant's reply to each, forwards,
    under the assistant's instructions and after the turns before it. Each earlier turn goes through
    `check` (texts → {reason, redacted}: 01's constraint gate), its redacted text kept. Adds `turns`,
    `history` (JSON of the earlier turns, None for a single-turn row) and `history_note` (why a
    conversation is shorter than asked): a customer message that came back empty or failed the
    check ends the chain there (the turns after it are kept); a reply that did leaves the row
    single-turn."""
    rows = rows.copy()
    kept = rows.index[rows["keep_prompts"].astype(bool)]
    want = dict(zip(kept, customer_turns(cfg, len(kept))))
    rows["turns"], rows["history"], rows["history_note"] = 1, None, None
    if max(want.values(), default=1) < 2:
        return rows
    p, system = cfg.prompts, system_prompt(cfg)
    earlier = {i: [] for i in kept}  # customer messages before the last, nearest first
    for step in range(max(want.values()) - 1):
        todo = [i for i in kept if want[i] - 1 > step and len(earlier[i]) == step]
        reqs = [Request.chat(None, EARLIER_USER.format(domain=cfg.task.domain,
                                                       text=(earlier[i] or [rows.at[i, "text"]])[-1]),
                             temperature=p.temperature or 0.9, top_p=p.top_p or 0.95, max_tokens=p.max_tokens,
                             seed=int(rows.at[i, "seed"]) + 101 * (step + 1)) for i in todo]  # fmt: skip
        got = llm.generate(reqs, desc=f"01 earlier turns, step {step + 1}") if reqs else []
        texts = [clean_text(g[0].get("text") or "") if not g[0].get("error") else "" for g in got]
        verdict = _checked(texts, check)
        for i, text, (reason, redacted) in zip(todo, texts, verdict):
            if text and reason is None:
                earlier[i].append(redacted or text)
            else:
                rows.at[i, "history_note"] = f"earlier turn {step + 1}: {reason or 'empty'}"
    convo = {i: [{"role": "user", "content": m} for m in reversed(earlier[i])] for i in kept}
    for step in range(max(len(m) for m in earlier.values())):
        todo = [i for i in kept if len(earlier[i]) > step]
        reqs = []
        for i in todo:
            before = [t for t in convo[i][: 2 * step]]
            last = convo[i][2 * step]["content"]
            reqs.append(Request(messages=chat(system, json.dumps(before), last), temperature=0.7, top_p=0.95,
                                max_tokens=cfg.responses.max_tokens, seed=int(rows.at[i, "seed"]) + 7 * (step + 1)))  # fmt: skip
        got = llm.generate(reqs, desc=f"01 the assistant's earlier replies, step {step + 1}") if reqs else []
        texts = [(g[0].get("text") or "").strip() if not g[0].get("error") else "" for g in got]
        for i, text, (reason, redacted) in zip(todo, texts, _checked(texts, check)):
            ok = bool(text) and reason is None
            convo[i].insert(2 * step + 1, {"role": "assistant", "content": (redacted or text) if ok else ""})
            if not ok:
                rows.at[i, "history_note"] = f"earlier reply {step + 1}: {reason or 'empty'}; single-turn"
    for i in kept:
        if earlier[i] and all(t["content"] for t in convo[i]):  # a failed earlier reply: single-turn
            rows.at[i, "history"] = json.dumps(convo[i], ensure_ascii=False)
            rows.at[i, "turns"] = len(earlier[i]) + 1
    return rows


def criterion(cfg: RunConfig, dim: str, should_refuse: bool) -> str:
    t = cfg.task
    if dim == "refusal_quality":
        why = "; ".join(t.must_refuse)  # the config refuses refusal cells without the list
        return REFUSE.format(why=why) if should_refuse else ANSWER
    policies = "; ".join(t.policies) or NO_POLICIES
    return REPLY_CRITERIA.get(dim, RUBRIC[dim]).format(domain=t.domain, policies=policies, topic="the message's topic")


def judge_requests(cfg: RunConfig, items: pd.DataFrame, wording=None) -> tuple[list[Request], list[tuple]]:
    """One request per (item, dimension, juror): `items` has text (the message), reply and
    should_refuse. Keys: (item index, dimension, juror number); a model's juror k reads wording k.
    `wording`: what the judge is told (`Wording`: replies' by default; summaries pass theirs)."""
    w, j = wording or WORDING, cfg.judge
    anchor = w.anchor(cfg) if j.anchor else ""  # a real example, where the data has one
    reqs, keys = [], []
    for i, it in items.iterrows():
        for dim in w.rubric(cfg):
            crit = w.criterion(cfg, dim, bool(it["should_refuse"]))
            for juror, (_, k) in enumerate(cfg.jurors()):
                reqs.append(
                    Request.rating(
                        w.judge_system.format(domain=cfg.task.domain),
                        w.judge_user[k].format(
                            criterion=crit,
                            text=shown(it["text"], it.get("history"))[: w.input_chars],
                            reply=str(it["reply"])[:1200],
                            anchor=anchor,
                        ),
                        temperature=j.temperature,
                        max_tokens=j.max_tokens,
                        seed=cfg.seed + k,
                    )
                )
                keys.append((i, dim, juror))
    return reqs, keys


def anchor(cfg: RunConfig) -> str:
    """The judge's real example: none for replies (the data has messages, not replies to them)."""
    return ""


# A support reply apologises often ("I'm sorry for the delay") without refusing: of AdvBench's refusal
# phrases (quality.REFUSAL_PHRASES), only those that say no count here.
APOLOGY = ("i'm sorry", "i am sorry", "i apologize", "my apologies", "i'm really sorry", "i do not", "as an ai",
           "as a language model", "as an assistant", "unethical", "not ethical", "not appropriate")  # fmt: skip
SAYS_NO = tuple(p for p in REFUSAL_PHRASES if p not in APOLOGY) + (
    "not able to help",
    "not allowed to",
    "i must refuse",
)


PAIR_SYSTEM = "You compare two replies of {domain}'s support assistant to the same customer message."
PAIR_USER = (
    'Customer message: "{text}"\n\nReply A: "{a}"\n\nReply B: "{b}"\n\nThe assistant\'s policies: {policies}. '
    "{refusal}Which reply is better? Answer with one letter, A or B."
)


def pairwise_requests(cfg: RunConfig, pairs: pd.DataFrame, wording=None) -> list[Request]:
    """Two requests per pair (text, chosen, rejected, should_refuse): chosen as A, then chosen as B,
    so a judge that prefers a position rather than a reply contradicts itself. The embedded model's
    first token is A or B (its probabilities are the verdict). `wording`: as `judge_requests`'s."""
    w, t = wording or WORDING, cfg.task
    policies = "; ".join(t.policies) or w.no_policies
    out = []
    for r in pairs.itertuples():
        refusal = "This request must be refused. " if r.should_refuse else "This request is legitimate. "
        for a, b in ((r.chosen, r.rejected), (r.rejected, r.chosen)):
            text = shown(r.text, getattr(r, "history", None))[: w.input_chars]
            user = w.pair_user.format(text=text, a=str(a)[:800], b=str(b)[:800],
                                      policies=policies, refusal=refusal)  # fmt: skip
            out.append(
                Request.chat(
                    w.pair_system.format(domain=t.domain),
                    user,
                    temperature=0.0,
                    max_tokens=2,
                    seed=cfg.seed,
                    first_tokens=("A", "B"),
                )
            )
    return out


def verdict(result: dict) -> str | None:
    """'A' or 'B' from one pairwise answer (the embedded model's likelier first token; an endpoint's
    first letter A or B); None when it names neither."""
    probs = result.get("first_probs")
    if probs and sum(probs.values()) > 0:
        return "A" if probs.get("A", 0.0) >= probs.get("B", 0.0) else "B"
    text = (result.get("text") or "").strip().upper()
    return text[0] if text[:1] in ("A", "B") else None


def pair_outcome(first: str | None, second: str | None) -> str:
    """A pair's outcome from the verdict with chosen as A (`first`) and as B (`second`): 'chosen' or
    'rejected' when both orders agree, 'position' when the verdict follows the position, 'unread'."""
    if first is None or second is None:
        return "unread"
    if (first, second) == ("A", "B"):
        return "chosen"
    if (first, second) == ("B", "A"):
        return "rejected"
    return "position"


def sft_records(cfg: RunConfig, rows: pd.DataFrame, system: str | None = None) -> list[dict]:
    """Chat records (system: the assistant's instructions, or `system`; the earlier turns, where the
    row has a `history`; user: the message; assistant: the reply) of the kept rows (message, text:
    the reply, should_refuse)."""
    system = system or system_prompt(cfg)
    return [
        {"messages": [{"role": "system", "content": system}, *turns(getattr(r, "history", None)),
                      {"role": "user", "content": r.message}, {"role": "assistant", "content": r.text}],
         "should_refuse": bool(r.should_refuse)}
        for r in rows.itertuples()
    ]  # fmt: skip


def dpo_records(cfg: RunConfig, pairs: pd.DataFrame, system: str | None = None) -> list[dict]:
    """Preference records (prompt: system and message; chosen, rejected: the replies) of `pairs`
    (text: the message, chosen, rejected); `system` as `sft_records`'."""
    system = system or system_prompt(cfg)
    return [
        {"prompt": [{"role": "system", "content": system}, *turns(getattr(r, "history", None)),
                    {"role": "user", "content": r.text}],
         "chosen": [{"role": "assistant", "content": r.chosen}],
         "rejected": [{"role": "assistant", "content": r.rejected}]}
        for r in pairs.itertuples()
    ]  # fmt: skip


def rewards(cfg: RunConfig) -> list:
    """GRPO's verifiable terms for replies: `refusal_right`, 1 when the reply refuses exactly where the
    message must be refused (`should_refuse`), else 0; `length_ok` (weight 0.2), 1 for a reply of 3
    words up to three quarters of `responses.max_tokens` words, less the further outside."""
    limit = max(3, int(cfg.responses.max_tokens * 0.75))

    def text(c) -> str:
        return (c[-1]["content"] if isinstance(c, list) else str(c)).strip()

    def refusal_right(completions, should_refuse, **_) -> list[float]:
        return [float(refuses(text(c)) == bool(s)) for c, s in zip(completions, should_refuse)]

    def length_ok(completions, **_) -> list[float]:
        n = [len(text(c).split()) for c in completions]
        return [1.0 if 3 <= k <= limit else (k / 3 if k < 3 else limit / k) for k in n]

    length_ok.weight = 0.2
    return [refusal_right, length_ok]


def over_limit(cfg: RunConfig, texts: pd.Series) -> pd.Series:
    """04: the answers too long to train on, besides quality.max_chars: none for replies."""
    return pd.Series(False, index=texts.index)


def scores(answers: pd.DataFrame) -> pd.DataFrame:
    """06's scores of each answer (text, reply) besides the judge's: none for replies."""
    return answers


def reward_criteria(cfg: RunConfig) -> None:
    """GRPO's judge reward reads causal.REWARD_CRITERIA for replies' dimensions."""
    return None


def refuses(reply: str | None) -> bool:
    """Whether a reply refuses: it says no (a phrase of `SAYS_NO`), or is empty."""
    r = str(reply or "").lower().replace("\u2019", "'")
    return not r.strip() or any(p in r for p in SAYS_NO)


def rank(cands: pd.DataFrame, margin: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Best-of-N and DPO pairs from judged candidates (row, candidate, reply, judge_score): per row,
    the best-scored candidate (ties: the lower candidate number) is `best`; a pair is best over
    worst when their scores differ by at least `margin` (ties and narrow gaps make none). Returns
    (one row per message: row, best_candidate, best_reply, best_score, worst_score, margin), pairs."""
    scored = cands.dropna(subset=["judge_score"]).sort_values(["row", "judge_score", "candidate"],
                                                             ascending=[True, False, True])  # fmt: skip
    best = scored.groupby("row").head(1).set_index("row")
    worst = scored.groupby("row").tail(1).set_index("row")
    out = pd.DataFrame(
        {
            "best_candidate": best["candidate"],
            "best_reply": best["reply"],
            "best_score": best["judge_score"],
            "worst_reply": worst["reply"],
            "worst_score": worst["judge_score"],
        }
    )
    out["margin"] = out["best_score"] - out["worst_score"]
    out = out.reset_index()
    pair = (out["margin"] >= margin) & (out["margin"] > 0)
    pairs = out.loc[pair, ["row", "best_reply", "worst_reply", "margin"]].rename(
        columns={"best_reply": "chosen", "worst_reply": "rejected"}
    )
    return out, pairs.reset_index(drop=True)


def calibration_items(cfg: RunConfig, judged: pd.DataFrame) -> pd.DataFrame:
    """Known-good and known-bad items for the judge, on `judge.calibration_rows` judged messages
    (label, text, should_refuse, best_reply) that are not to be refused: each message with its best
    reply (good), and the same reply shown under the message of another topic (bad: it answers
    something else). Columns: id, text, reply, should_refuse, known."""
    live = judged[~judged["should_refuse"] & judged["best_reply"].notna()]
    n = min(cfg.judge.calibration_rows, len(live))
    if n < 2 or live["label"].nunique() < 2:
        return pd.DataFrame(columns=["id", "text", "reply", "should_refuse", "known"])
    live = live.sample(n, random_state=cfg.seed).reset_index(drop=True)
    rng = np.random.default_rng(cfg.seed)
    other = [rng.choice(live.index[live["label"] != lab]) for lab in live["label"]]
    good = pd.DataFrame({"id": [f"good{i}" for i in range(n)], "text": live["text"], "reply": live["best_reply"]})
    bad = pd.DataFrame({"id": [f"bad{i}" for i in range(n)], "text": live.loc[other, "text"].to_numpy(),
                        "reply": live["best_reply"].to_numpy()})  # fmt: skip
    return pd.concat([good.assign(known="good"), bad.assign(known="bad")], ignore_index=True).assign(
        should_refuse=False
    )


# ---------------------------------------------------------------- 07 and what each text type says


def gap_requests(cfg: RunConfig, summary: pd.DataFrame, wording: Wording | None = None) -> list[Request]:
    """The cluster namer's requests (`reply_gaps.gap_requests`), in replies' words by default."""
    return reply_gaps.gap_requests(cfg, summary, wording or WORDING)


@dataclass(frozen=True)
class Wording:
    """What a text task's judge, pairwise judge and cluster namer are told: replies' (`WORDING`)
    and summaries' (`tasks.summarization.WORDING`); the request builders are the same."""

    rubric: Callable[[RunConfig], list[str]]
    criterion: Callable[[RunConfig, str, bool], str]
    anchor: Callable[[RunConfig], str]
    judge_system: str
    judge_user: tuple[str, ...]
    input_chars: int | None  # the most of an input a judge request shows (None: all)
    no_policies: str
    pair_system: str
    pair_user: str
    exemplar_chars: int | None  # the most of each cluster exemplar the namer reads
    gap_system: str
    gap_user: str
    gap_example: dict = field(default_factory=dict)
    signatures: dict = field(default_factory=dict)


WORDING = Wording(
    rubric=rubric,
    criterion=criterion,
    anchor=anchor,
    judge_system=JUDGE_SYSTEM,
    judge_user=JUDGE_USER,
    input_chars=INPUT_CHARS,
    no_policies=NO_POLICIES,
    pair_system=PAIR_SYSTEM,
    pair_user=PAIR_USER,
    exemplar_chars=EXEMPLAR_CHARS,
    gap_system=GAP_SYSTEM,
    gap_user=GAP_USER,
    gap_example=GAP_EXAMPLE,
    signatures=SIGNATURES,
)
