"""Summaries: a source text → its summary in at most `task.summary_max_words` words
(`task.type: summarization`).

A row is a source text of one of the task's kinds (`task.labels`; ACLSum's one kind is
`paper_abstract`); 01 writes new sources in the manner of the real seed sources (`PROMPT`), and the
target is a summary. The stages after 01 are replies' (flows/text.py): this
module gives them the summarizer's instructions (the domain, `task.policies` as the summary's
rules, the word limit), the rubric (`SUMMARY_RUBRIC`) and the judge's wording, the calibration
(a source with its summary, against the same summary under another source), GRPO's verifiable
terms, and what replies have no use for: the dataset's reference summaries (`references`, ROUGE-L
in 06) and the faithfulness check (`unsupported`: the numbers and names of a summary that its
source does not have), a failure kind of its own in 07. Nothing is refused here: a summary that
refuses is an over-refusal, as a reply's is.
"""

from __future__ import annotations

import re

import pandas as pd

from workbench import data
from workbench.config import RunConfig
from workbench.llm.types import Request
from workbench.tasks import reply
from workbench.tasks.classification import check_data, dev, histories, label_counts, labels, seeds  # noqa: F401
from workbench.tasks.reply import pair_outcome, rank, refuses, verdict  # noqa: F401

ROW_KEY = "label"  # the kind of source: rows are planned and sampled by it
REFUSALS = False  # a summary is never due to refuse: a refusal is a failure to answer
LABEL_JURY = False
INPUT_CHARS_ESTIMATE = None  # a source: as long as 01 may write it (`prompts.max_tokens`)
FLOW = "text"  # its stages from 02 on: flows/text.py (00 and 01 are classification's)
NOUNS = {"input": "source", "inputs": "sources", "output": "summary", "outputs": "summaries"}

# 01: what the generator is asked for a new source (prompts.render fills these in)
PROMPT = {
    "system": "You write {domain}.",
    "persona": "You are {persona}, writing {domain}.",
    "user": (
        "Kind of text: {topic}.\nExamples of such texts:\n{examples}\n"
        "Write one new text of this kind, on a subject of your own, in your own words. Output only the text."
    ),
    "difficulty": {
        "easy": "Make it easy to summarize: one clear point, plainly stated.",
        "medium": "Make it an ordinary text of its kind, with a few points and some detail.",
        "hard": "Make it hard to summarize: several findings, numbers and names, with caveats.",
    },
}

SUMMARY_RUBRIC = ["faithfulness", "coverage", "concision"]
CRITERIA = {
    "faithfulness": "every statement of the summary is supported by the source: no invented numbers, names, "
    "results or claims, and nothing the source does not say",
    "coverage": "the summary keeps the source's main points: the problem, what was done and what came of it",
    "concision": "the summary says it in at most {words} words of plain prose, with no repetition, preamble or notes",
    "policy_compliance": "the summary keeps to the rules: {policies}",
    "formatting": "it reads as a summary: plain sentences, no headings, lists, placeholders or markup",
}
SYSTEM = (
    "You summarize {domain}.{policies} Summarize the user's text in at most {words} words. Reply with the summary only."
)
NO_POLICIES = "none beyond faithfulness to the source"
INPUT_CHARS = 3000  # the most of a source a judge request shows
EXEMPLAR_CHARS = 400  # the most of each source the namer reads
JUDGE_SYSTEM = "You are a strict reviewer of summaries of {domain}."
JUDGE_USER = (
    (
        'Criterion: {criterion}.\n{anchor}Source: "{text}"\nSummary: "{reply}"\n'
        "Score the summary 1 (fails) to 5 (fully meets), then give a one-sentence reason."
    ),
    (
        "Rate from 1 to 5 how well this summary meets the criterion.\nCriterion: {criterion}.\n{anchor}"
        'Source: "{text}"\nSummary: "{reply}"\nReply with the rating, then one short sentence why.'
    ),
)
ANCHOR = 'A real example of a good summary of another text:\nText: "{source}"\nIts summary: "{summary}"\n\n'
ANCHOR_CHARS = 1500  # the example's source is the shortest seed, cut to this
PAIR_SYSTEM = "You compare two summaries of the same text from {domain}."
PAIR_USER = (
    'Source: "{text}"\n\nSummary A: "{a}"\n\nSummary B: "{b}"\n\nThe summary\'s rules: faithful to the source, '
    "its main points, short; {policies}. Which summary is better? Answer with one letter, A or B."
)
REWRITE = (
    "Rewrite this summary {how}. Keep every fact, number and name exactly; reply with the rewritten summary "
    'only.\nSummary: "{text}"'
)


def rubric(cfg: RunConfig) -> list[str]:
    return reply.rubric(cfg, SUMMARY_RUBRIC)


def system_prompt(cfg: RunConfig) -> str:
    """The summarizer's instructions: its domain, the summary's rules and the word limit."""
    t = cfg.task
    return SYSTEM.format(domain=t.domain, policies=reply.listed("Rules", t.policies), words=t.summary_max_words)


def reply_requests(cfg: RunConfig, rows: pd.DataFrame) -> list[Request]:
    """02: one request per source for `responses.candidates` summaries (each candidate its own seed)."""
    r, system = cfg.responses, system_prompt(cfg)
    return [
        Request.chat(system, text, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                     seed=int(seed), n=r.candidates)
        for text, seed in zip(rows["text"], rows["seed"])
    ]  # fmt: skip


def criterion(cfg: RunConfig, dim: str, should_refuse: bool = False) -> str:
    t = cfg.task
    if dim not in CRITERIA:
        return dim.replace("_", " ")
    policies = "; ".join(t.policies) or NO_POLICIES
    return CRITERIA[dim].format(words=t.summary_max_words, policies=policies)


def judge_requests(cfg: RunConfig, items: pd.DataFrame) -> tuple[list[Request], list[tuple]]:
    """The judge on each (source, summary): `tasks.reply.judge_requests` in this module's wording."""
    return reply.judge_requests(cfg, items, WORDING)


def pairwise_requests(cfg: RunConfig, pairs: pd.DataFrame) -> list[Request]:
    """Two summaries of one source in both orders: `tasks.reply.pairwise_requests` in this wording."""
    return reply.pairwise_requests(cfg, pairs, WORDING)


def sft_records(cfg: RunConfig, rows: pd.DataFrame) -> list[dict]:
    return reply.sft_records(cfg, rows, system_prompt(cfg))


def dpo_records(cfg: RunConfig, pairs: pd.DataFrame) -> list[dict]:
    return reply.dpo_records(cfg, pairs, system_prompt(cfg))


def anchor(cfg: RunConfig) -> str:
    """With `judge.anchor`, the judge's single-shot example: the shortest seed source that has a
    reference summary in the dataset, with that reference (the seeds' ids are the train split's);
    '' when no seed has one (a seeds file, or a dataset without references)."""
    if not cfg.data.dataset or cfg.data.seeds_file:
        return ""
    real = data.seeds(cfg)
    real = real.assign(reference=real["id"].map(references(cfg, "train"))).dropna(subset=["reference"])
    real = real[real["reference"].str.strip() != ""]
    if real.empty:
        return ""
    best = real.loc[real["text"].str.len().idxmin()]
    return ANCHOR.format(source=best["text"][:ANCHOR_CHARS], summary=best["reference"])


# ---------------------------------------------------------------- faithfulness, references, rewards

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_MARKER = re.compile(r"(?m)^\s*\d+[.)]\s")  # a list's "1." or "2)": formatting, not a number the text states


def _numbers(text: str) -> list[str]:
    return _NUMBER.findall(_MARKER.sub(" ", text))


_WORD = re.compile(r"[A-Za-z][\w-]*")


def _names(text: str) -> list[str]:
    """Words that name something: a capital letter after a sentence's first word (BERT, WordNet,
    Transformer), by rule."""
    out = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        words = _WORD.findall(sentence)
        out += [w for w in words[1:] if any(c.isupper() for c in w)]
    return out


def unsupported(summary: str, source: str) -> list[str]:
    """The numbers and names of `summary` that `source` does not have (a name matches with or
    without a plural s; case counts; a list marker such as "1." is no number): what a faithful
    summary cannot state."""
    have_numbers = set(_numbers(source))
    have_words = set(_WORD.findall(source))
    missing = [n for n in _numbers(summary) if n not in have_numbers]
    for w in _names(summary):
        if w not in have_words and w.rstrip("s") not in have_words and w + "s" not in have_words:
            missing.append(w)
    return list(dict.fromkeys(missing))


def faithful(summary: str | None, source: str) -> bool:
    """Whether every number and name of the summary is in its source (`unsupported` is empty)."""
    return isinstance(summary, str) and bool(summary.strip()) and not unsupported(summary, source)


def references(cfg: RunConfig, split: str = "test") -> pd.Series:
    """The dataset's reference summaries by row id (its `reference` column: empty when it has
    none). Ids are data.read_rows': `<split>-<record number + 1>`."""
    path = data.dataset_dir(cfg) / f"{split}.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "reference" not in table:
        return pd.Series(dtype=str)
    return pd.Series(table["reference"].to_numpy(), index=[f"{split}-{i + 2}" for i in range(len(table))])


def test(cfg: RunConfig) -> pd.DataFrame:
    """The real test sources with their `reference` summary where the dataset has one (None where not)."""
    rows = data.test_split(cfg)
    ref = references(cfg)
    return rows.assign(reference=rows["id"].map(ref).replace("", None) if len(ref) else None)


def rouge_l(summaries: list[str], refs: list[str]) -> list[float]:
    """ROUGE-L F1 of each summary against its reference (Google's rouge-score, Porter stemming)."""
    from rouge_score import rouge_scorer  # rouge-score (nltk) only where references are scored

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(str(r), str(s or ""))["rougeL"].fmeasure for s, r in zip(summaries, refs)]


def over_limit(cfg: RunConfig, texts: pd.Series) -> pd.Series:
    """04: summaries longer than `task.summary_max_words` words (rejected as over_word_limit: a
    summary that copies its source is the commonest)."""
    return texts.fillna("").astype(str).str.split().str.len() > cfg.task.summary_max_words


def scores(answers: pd.DataFrame) -> pd.DataFrame:
    """06's scores of each summary (text: its source, reply, reference): `faithful` (`faithful`), the
    numbers and names it states that the source lacks (`unsupported`, comma-separated), and
    `rouge_l` against the reference where there is one (NaN where not)."""
    out = answers.assign(faithful=[faithful(r, str(t)) for t, r in zip(answers["text"], answers["reply"])])
    out["unsupported"] = [", ".join(unsupported(str(r or ""), str(t))) for t, r in zip(out["text"], out["reply"])]
    has = out["reference"].notna() & (out["reference"].astype(str).str.strip() != "") if "reference" in out else None
    out["rouge_l"] = float("nan")
    if has is not None and has.any():
        out.loc[has, "rouge_l"] = rouge_l(list(out.loc[has, "reply"]), list(out.loc[has, "reference"]))
    return out


def rewards(cfg: RunConfig) -> list:
    """GRPO's verifiable terms for summaries: `faithful_names` (the share of the summary's numbers
    and names found in its source; 1 when it has none; 0 for a refusal or nothing), and
    `length_ok` (weight 0.2): 1 for 5 words up to `task.summary_max_words`, less the further outside."""
    limit = cfg.task.summary_max_words

    def text(c) -> str:
        return (c[-1]["content"] if isinstance(c, list) else str(c)).strip()

    def source(p) -> str:
        return p[-1]["content"] if isinstance(p, list) else str(p)

    def faithful_names(completions, prompts, **_) -> list[float]:
        out = []
        for c, p in zip(completions, prompts):
            s = text(c)
            total = len(_numbers(s)) + len(_names(s))
            out.append(0.0 if refuses(s) else 1.0 - len(unsupported(s, source(p))) / total if total else 1.0)
        return out

    def length_ok(completions, **_) -> list[float]:
        n = [len(text(c).split()) for c in completions]
        return [1.0 if 5 <= k <= limit else (k / 5 if k < 5 else limit / k) for k in n]

    length_ok.weight = 0.2
    return [faithful_names, length_ok]


def reward_criteria(cfg: RunConfig) -> dict:
    """GRPO's judge reward on each rubric dimension, in the judge's own criteria (`criterion`)."""
    return {d: criterion(cfg, d).replace("{", "{{").replace("}", "}}") for d in rubric(cfg)}


def calibration_items(cfg: RunConfig, judged: pd.DataFrame) -> pd.DataFrame:
    """Known-good and known-bad items for the judge, on `judge.calibration_rows` judged sources
    (text, best_reply): each source with its best summary (good), and the same summary shown under
    another source (bad: it summarizes something else). Columns: id, text, reply, should_refuse, known."""
    live = judged[judged["best_reply"].notna()]
    n = min(cfg.judge.calibration_rows, len(live))
    if n < 2:
        return pd.DataFrame(columns=["id", "text", "reply", "should_refuse", "known"])
    live = live.sample(n, random_state=cfg.seed).reset_index(drop=True)
    other = [(i + 1) % n for i in range(n)]  # the next source's summary: always another source
    good = pd.DataFrame({"id": [f"good{i}" for i in range(n)], "text": live["text"], "reply": live["best_reply"]})
    bad = pd.DataFrame({"id": [f"bad{i}" for i in range(n)], "text": live["text"].to_numpy(),
                        "reply": live.loc[other, "best_reply"].to_numpy()})  # fmt: skip
    return pd.concat([good.assign(known="good"), bad.assign(known="bad")], ignore_index=True).assign(
        should_refuse=False
    )


# ---------------------------------------------------------------- 07: failures and what to change

SIGNATURES = reply.SIGNATURES | {
    "lost": "the tuned summary lost to the untuned model's",
    "over_refused": "the summarizer refused to summarize",
    "unfaithful": "the summary states numbers or names its source does not have",
    "low": "the summary scored low on {dim}",
}


def signature(lost: bool, over_refused: bool, low: list[str], not_refused: bool = False, extra: list[str] = ()) -> str:
    return reply.signature(lost, over_refused, low, not_refused, extra)


def checks(items: pd.DataFrame) -> list[list[str]]:
    """`unfaithful` for each (text: the source, reply: the summary) whose summary has a number or
    name its source lacks."""
    return [[] if not isinstance(r, str) or not unsupported(r, str(t)) else ["unfaithful"]
            for t, r in zip(items["text"], items["reply"])]  # fmt: skip


def describe(sig: str) -> str:
    return reply.describe(sig, SIGNATURES)


GAP_SYSTEM = "You review where a summarizer of {domain} fails."
GAP_USER = (
    "The summarizer's rules: {policies}.\nThese texts got poor summaries ({why}):\n{examples}\n\n"
    "Answer in JSON with: name (3 to 6 words: what these texts have in common), policy (one new rule, under "
    "25 words, that would make their summaries better), persona (who writes such texts, 2 to 5 words). For "
    'example: {{"name": "{ex_name}", "policy": "{ex_policy}", "persona": "{ex_persona}"}}'
)
GAP_EXAMPLE = {"name": "reports of quarterly sales figures", "policy": "state each figure with its unit and period",
               "persona": "a company's finance team"}  # fmt: skip
GAP_SCHEMA = reply.GAP_SCHEMA


def gap_requests(cfg: RunConfig, summary: pd.DataFrame) -> list[Request]:
    return reply.gap_requests(cfg, summary, WORDING)


def read_gaps(parsed: list[dict | None]) -> list[dict]:
    return reply.read_gaps(parsed, GAP_EXAMPLE)


# what this type's judge, pairwise judge and cluster namer are told (replies' request builders)
WORDING = reply.Wording(
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
