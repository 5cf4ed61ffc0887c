"""The summarization task type: its config and data (ACLSum's abstracts with reference summaries),
the faithfulness rule, ROUGE-L, the verifiable rewards, the judge's wording, the calibration, and
02-04 and 06's scores with a scripted generator and judge."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from scripted_llm import ScriptedLLM
from support import notebook_source

from workbench import data, judge, tasks
from workbench.config import check_runnable, load_config
from workbench.flows import text_build
from workbench.runs import STAGES
from workbench.stage import Stage
from workbench.tasks import reply as reply_task
from workbench.tasks import summarization as summ

ROOT = Path(__file__).resolve().parent.parent
SOURCE = (
    "We present LexNet, a parser for German trained on 12,000 sentences. It improves labelled attachment "
    "by 2.5 points over the Stanford baseline."
)


@pytest.fixture
def cfg():
    return load_config(ROOT / "configs" / "aclsum-summaries.yaml")[0]


@pytest.mark.slow
def test_the_summaries_config_runs_every_stage_with_its_own_pages(cfg, summaries_run):
    assert tasks.of(cfg) is summ and judge.rubric(cfg) == summ.SUMMARY_RUBRIC
    assert cfg.responses.max_tokens == 90  # 1.5 tokens per word of task.summary_max_words (60)
    check_runnable(cfg)
    assert summ.FLOW == "text"  # replies' stages, in a summarizer's words (tasks/pages.py)
    system = summ.system_prompt(cfg)
    assert "at most 60 words" in system and "add none" in system
    # every stage ran, from the one set of notebooks
    run = summaries_run
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["status"] == "finished" and [s for s in STAGES if prov["stages"][s]["status"] == "done"] == STAGES
    for nb in sorted((run / "notebooks").glob("*.ipynb")):
        assert notebook_source(nb).parent == (ROOT / "notebooks").resolve(), nb.name
    for name in ["prompts", "candidates", "judged", "pairs", "dataset", "training", "evaluation", "failures"]:
        assert (run / "artifacts" / f"{name}.parquet").is_file(), name
    rows = pd.read_parquet(run / "artifacts" / "dataset.parquet")
    assert rows["keep"].any() and rows.loc[~rows["keep"], "reject_reason"].notna().all()
    export = run / "artifacts" / "export"  # the exports every task type writes
    sft = [json.loads(x) for x in (export / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == rows["keep"].sum() and sft[0]["messages"][0]["content"] == system
    assert (export / "hf" / "dataset_info.json").is_file() and "summarization data" in (
        export / "README.md"
    ).read_text()
    table = pd.read_parquet(run / "artifacts" / "evaluation.parquet")
    assert "rouge_l" in table and table["rouge_l"].dropna().between(0, 1).all()  # against ACLSum's references
    assert "Traceback" not in (run / "report.html").read_text()


def test_test_sources_carry_their_reference_summary(cfg):
    rows = summ.test(cfg)
    assert len(rows) == 16 and rows["reference"].notna().all() and (rows["label"] == "paper_abstract").all()
    raw = pd.read_csv(ROOT / "data" / "aclsum" / "test.csv", dtype=str)
    first = rows.iloc[0]
    n = int(first["id"].split("-")[1]) - 2  # read_rows' ids count the header as line 1
    assert raw.loc[n, "text"] == first["text"] and raw.loc[n, "reference"] == first["reference"]
    # the seeds and dev sources come from the train split and are disjoint
    seeds, dev = data.seeds(cfg), data.dev_split(cfg)
    assert len(seeds) == 3 and len(dev) == 12 and not set(seeds["text"]) & set(dev["text"])


@pytest.mark.parametrize(
    "summary, missing",
    [
        ("LexNet parses German with 12,000 training sentences, 2.5 points above the Stanford baseline.", []),
        ("LexNet gains 3.1 points over Stanford.", ["3.1"]),  # a number the source does not have
        ("The parser beats BERT on German.", ["BERT"]),  # a name the source does not have
        ("Parsers for German improve.", []),  # a plural of the source's name; a sentence's first word
        ("We trained LexNet. Results improve.", []),
        ("1. LexNet parses German.\n2. It beats Stanford.", []),  # list markers are no numbers
    ],
)
def test_faithfulness_finds_numbers_and_names_the_source_lacks(summary, missing):
    assert summ.unsupported(summary, SOURCE) == missing
    assert summ.faithful(summary, SOURCE) == (not missing)


def test_rouge_l_against_the_reference():
    got = summ.rouge_l(
        ["the parser improves attachment", "bananas are yellow", None], ["the parser improves attachment"] * 3
    )
    assert got[0] == pytest.approx(1.0) and got[1] == 0.0 and got[2] == 0.0


def test_the_verifiable_rewards_move_with_faithfulness_and_length(cfg):
    faithful_names, length_ok = summ.rewards(cfg)
    prompt = [{"role": "system", "content": "Summarize."}, {"role": "user", "content": SOURCE}]
    said = [
        "LexNet gains 2.5 points over Stanford.",
        "The LexNet parser gains 3.1 points over BERT.",
        "I'm sorry, I can't help.",
    ]
    got = faithful_names([[{"role": "assistant", "content": s}] for s in said], prompts=[prompt] * 3)
    assert got == [1.0, pytest.approx(1 / 3), 0.0]  # LexNet, 3.1, BERT: one of three in the source
    words = ["word " * 30, "word " * 120, "two words"]
    assert length_ok(words) == [1.0, pytest.approx(60 / 120), pytest.approx(2 / 5)]


def test_the_judge_reads_the_source_and_the_summary_on_the_summary_rubric(cfg):
    items = pd.DataFrame({"text": [SOURCE], "reply": ["LexNet parses German."], "should_refuse": [False]})
    reqs, keys = summ.judge_requests(cfg, items)
    assert [k[1] for k in keys] == summ.SUMMARY_RUBRIC
    user = {k[1]: r.messages[-1][1] for r, k in zip(reqs, keys)}
    assert f'Source: "{SOURCE}"' in user["faithfulness"] and 'Summary: "LexNet parses German."' in user["coverage"]
    assert "at most 60 words" in user["concision"] and "invented numbers" in user["faithfulness"]
    pair = summ.pairwise_requests(cfg, pd.DataFrame({"text": [SOURCE], "chosen": ["a"], "rejected": ["b"],
                                                      "should_refuse": [False]}))  # fmt: skip
    assert (
        len(pair) == 2 and 'Summary A: "a"' in pair[0].messages[-1][1] and 'Summary A: "b"' in pair[1].messages[-1][1]
    )
    # judge.anchor: a real seed source with its reference summary, the shortest seed that has one
    seeds = data.seeds(cfg)
    shortest = seeds.loc[seeds["text"].str.len().idxmin()]
    reference = summ.references(cfg, "train")[shortest["id"]]
    assert (
        cfg.judge.anchor
        and f'Its summary: "{reference}"' in user["coverage"]
        and shortest["text"][:200] in user["coverage"]
    )
    plain = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"anchor": False})})
    assert "A real example" not in summ.judge_requests(plain, items)[0][0].messages[-1][1]
    reward = summ.reward_criteria(cfg)
    assert set(reward) == set(summ.SUMMARY_RUBRIC) and "60 words" in reward["concision"].format(domain="x")


def test_the_calibrations_bad_item_is_another_sources_summary(cfg):
    judged = pd.DataFrame({"text": [f"source {i}" for i in range(5)], "best_reply": [f"summary {i}" for i in range(5)]})
    items = summ.calibration_items(cfg, judged)
    good, bad = items[items["known"] == "good"], items[items["known"] == "bad"]
    assert len(good) == len(bad) == 5
    assert all(t.split()[1] == r.split()[1] for t, r in zip(good["text"], good["reply"]))
    assert all(t.split()[1] != r.split()[1] for t, r in zip(bad["text"], bad["reply"]))


def test_02_to_04_and_06s_scores_with_a_scripted_generator_and_judge(cfg, tmp_path, monkeypatch):
    """Candidate 0 copies the source's first sentence (faithful), candidate 1 invents a number,
    candidate 2 refuses; a judge that scores faithfulness by the rule keeps candidate 0 as the
    best, pairs it over the refusal, and its calibration separates a summary from another source's;
    04 exports the kept summaries under the summarizer's instructions; 06's scores count the
    invented number as unfaithful and score ROUGE-L against the reference."""

    turn = itertools.count()  # the scripted model is called once per candidate, in order

    def writer(req, i):
        first = req.messages[-1][1].split(". ")[0]
        return [f"{first}.", f"{first} with 99.9 points.", "I'm sorry, I can't help with that."][next(turn) % 3]

    def judge_(req, i):
        user = req.messages[-1][1]
        if "Summary A:" in user:
            a = re.search(r'Summary A: "(.*?)"', user, re.S).group(1)
            return "B" if "sorry" in a or "99.9" in a else "A"  # the faithful first sentence
        source = re.search(r'Source: "(.*?)"\n', user, re.S).group(1)
        said = re.search(r'Summary: "(.*?)"\n', user, re.S).group(1)
        score = 5 if said.rstrip(".") in source and summ.faithful(said, source) else 1
        return json.dumps({"score": score, "rationale": f"scored {score}"})

    gen, jud = ScriptedLLM(writer, tmp_path), ScriptedLLM(judge_, tmp_path)
    monkeypatch.setattr(Stage, "llm", lambda self, role="generator": gen)
    monkeypatch.setattr(Stage, "jury", lambda self: {"llm": jud})
    c = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"calibration_rows": 4}),
                               "filter": cfg.filter.model_copy(update={"min_domain_score": 0.0})})  # fmt: skip
    sources = list(data.dev_split(c)["text"])[:6]
    sources[5] = sources[5].replace(". ", ", ")  # one long sentence: its first-sentence summary runs over 60 words
    prompts = pd.DataFrame({"id": [f"s{i}" for i in range(6)], "label": "paper_abstract", "text": sources,
                            "keep_prompts": True, "reject_reason_prompts": None, "refusal": None, "seed": range(6)})  # fmt: skip
    Stage("01_prompts", c, tmp_path / "run").save(prompts, "prompts")
    Stage("00_task", c, tmp_path / "run").save(data.seeds(c), "seeds")
    cands, m2 = text_build.candidates(Stage("02_responses", c, tmp_path / "run"))
    assert len(cands) == 18 and cands["refuses"].sum() == 6 and m2["nouns"]["output"] == "summary"
    assert "candidate summaries" in text_build.candidates_markdown(
        m2, summ.REFUSALS
    ) and "must be refused" not in text_build.candidates_markdown(m2, summ.REFUSALS)
    assert all("at most 60 words" in r.messages[0][1] and r.n == 3 for r in gen.requests)
    judged, cands, pairs, m3 = text_build.judge_stage(Stage("03_judge", c, tmp_path / "run"))
    assert (judged["best_candidate"] == 0).all() and judged["keep_judge"].all()
    assert pairs["pair"].all() and len(pairs) == 6 and m3["calibration_auc"] == 1.0
    (tmp_path / "run" / "config.yaml").write_text("task: {type: summarization}\n")  # a run folder's, for the card
    rows, m4 = text_build.filter_stage(Stage("04_filter", c, tmp_path / "run"))
    assert rows.set_index("id").at["s5", "reject_reason"] == "over_word_limit"  # over task.summary_max_words
    assert (rows.loc[rows["keep"], "text"].str.split().str.len() <= 60).all()
    sft = [json.loads(x) for x in (tmp_path / "run" / "artifacts" / "export" / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == m4["kept"] > 0 and sft[0]["messages"][0]["content"] == summ.system_prompt(c)
    line = text_build.filter_markdown(m4, summ.REFUSALS)
    assert "6 sources" in line or "of 6 sources" in line

    # 06's scores: a reference written from the whole paper may name what the abstract does not, so
    # the third answer is a reference the rule finds faithful to its abstract
    test = summ.test(c)
    ok = test[[summ.faithful(r, t) for t, r in zip(test["text"], test["reference"])]]
    answers = pd.concat([test.head(2), ok.head(1)], ignore_index=True)
    said = [answers["text"].iloc[0].split(". ")[0] + ".", "It reports 99.9 points.", answers["reference"].iloc[2]]
    scored = summ.scores(answers.assign(reply=said))
    assert scored["faithful"].tolist() == [True, False, True] and scored["unsupported"].iloc[1] == "99.9"
    assert scored["rouge_l"].iloc[2] == pytest.approx(1.0) and scored["rouge_l"].iloc[1] < 0.2


def test_a_users_dataset_of_texts_and_references_needs_no_label_column(cfg, tmp_path):
    """A summarization dataset is often text and reference only: every row is one kind, `document`,
    and the reference is never taken for a label."""
    rows = "text,reference\n" + "".join(
        f'"Text number {i}. It says {i} things.","It says {i} things."\n' for i in range(9)
    )
    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text(rows)
    c = cfg.model_copy(update={"task": cfg.task.model_copy(update={"labels": None}),
                               "data": cfg.data.model_copy(update={"dataset": str(tmp_path), "dev_per_label": 3})})  # fmt: skip
    summ.check_data(c)
    assert data.labels(c) == ["document"] and len(data.seeds(c)) == 3
    test = summ.test(c)
    assert (test["label"] == "document").all() and (
        test["reference"] == test["text"].str.split(". ", regex=False).str[1]
    ).all()


def test_a_summarys_failure_kinds_in_words():
    assert summ.describe("lost low:coverage unfaithful") == (
        "the tuned summary lost to the untuned model's; the summary scored low on coverage; the summary states "
        "numbers or names its source does not have"
    )
    items = pd.DataFrame({"text": [SOURCE, SOURCE, SOURCE], "reply": ["LexNet parses German.", "It beats BERT.", None]})
    assert summ.checks(items) == [[], ["unfaithful"], []]


def test_04_rejects_a_summary_over_the_word_limit(cfg):
    texts = pd.Series(["word " * 60, "word " * 61, None])
    assert summ.over_limit(cfg, texts).tolist() == [False, True, False]
    assert not reply_task.over_limit(cfg, texts).any()  # replies: quality.max_chars only
