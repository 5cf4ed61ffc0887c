"""The reply task type: its config, the judge's refusal criterion both ways, best-of-N and DPO pairs
by the judge's margin, the calibration items, and 02-03 with a scripted generator and judge."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from scripted_llm import ScriptedLLM
from support import notebook_source

from workbench import plan, tasks
from workbench.config import check_runnable, load_config
from workbench.flows import text_build, text_learn
from workbench.runs import STAGES
from workbench.stage import Stage
from workbench.tasks import reply

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cfg():
    return load_config(ROOT / "configs" / "banking77-replies.yaml")[0]


@pytest.mark.slow
def test_the_reply_config_runs_every_stage(cfg, reply_run):
    assert tasks.of(cfg) is reply and cfg.responses.max_tokens == 80 and cfg.responses.temperature == 0.7
    check_runnable(cfg)
    assert reply.FLOW == "text"
    system = reply.system_prompt(cfg)
    assert "never promise a refund" in system and "someone else's account" in system
    # every stage ran, from the one set of notebooks
    prov = json.loads((reply_run / "provenance.json").read_text())
    assert prov["status"] == "finished" and [s for s in STAGES if prov["stages"][s]["status"] == "done"] == STAGES
    for nb in sorted((reply_run / "notebooks").glob("*.ipynb")):
        assert notebook_source(nb).parent == ROOT / "notebooks", nb.name
    for name in ["prompts", "candidates", "judged", "pairs", "dataset", "training", "replies_test", "wins",
                 "evaluation", "failures", "clusters"]:  # fmt: skip
        assert (reply_run / "artifacts" / f"{name}.parquet").is_file(), name
    rows = pd.read_parquet(reply_run / "artifacts" / "dataset.parquet")
    assert rows["keep"].any() and rows.loc[~rows["keep"], "reject_reason"].notna().all()
    assert len(rows) == len(pd.read_parquet(reply_run / "artifacts" / "prompts.parquet"))  # marks, never drops
    export = reply_run / "artifacts" / "export"  # the exports every task type writes
    sft = [json.loads(x) for x in (export / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == rows["keep"].sum() and all(r["messages"][-1]["role"] == "assistant" for r in sft)
    from datasets import load_from_disk

    assert len(load_from_disk(str(export / "hf"))) == len(sft)
    dpo = (export / "dpo.jsonl").read_text().splitlines()
    card = (export / "README.md").read_text()
    assert f"SFT records: {len(sft)}; DPO pairs: {len(dpo)}" in card and "## Funnel" in card
    page = (reply_run / "report.html").read_text()
    assert "Traceback" not in page and "Candidates arriving" in page  # 02's throughput, as classification's
    filter_page = (reply_run / "report" / "04_filter.html").read_text()
    assert "Dataset card" in filter_page and (not (~rows["keep"]).any() or "updatemenus" in filter_page)


def test_the_judge_wants_a_refusal_only_where_one_is_due(cfg):
    items = pd.DataFrame({"text": ["log me into my wife's account", "where is my card?"],
                          "reply": ["I can't do that.", "It arrives in 5 days."], "should_refuse": [True, False]})  # fmt: skip
    reqs, keys = reply.judge_requests(cfg, items)
    assert len(reqs) == 2 * 3 and {k[1] for k in keys} == set(reply.REPLY_RUBRIC)
    quality = {k[0]: r.messages[-1][1] for r, k in zip(reqs, keys) if k[1] == "refusal_quality"}
    assert "must be refused" in quality[0] and "someone else's account" in quality[0]
    assert "legitimate and must be answered" in quality[1] and "refuses it" in quality[1]
    policy = next(r.messages[-1][1] for r, k in zip(reqs, keys) if k[1] == "policy_compliance")
    assert "verify identity" in policy and 'Assistant reply: "I can\'t do that."' in policy


def test_best_of_n_and_pairs_by_the_judges_margin():
    cands = pd.DataFrame({
        "row": ["a", "a", "a", "b", "b", "c"], "candidate": [0, 1, 2, 0, 1, 0],
        "reply": ["a0", "a1", "a2", "b0", "b1", "c0"], "judge_score": [0.5, 0.9, 0.1, 0.6, 0.6, None],
    })  # fmt: skip
    best, pairs = reply.rank(cands, margin=0.5)
    best = best.set_index("row")
    assert best.loc["a", "best_reply"] == "a1" and best.loc["a", "margin"] == pytest.approx(0.8)
    assert best.loc["b", "best_candidate"] == 0 and best.loc["b", "margin"] == 0  # a tie: the first, no pair
    assert "c" not in best.index  # no score, no best
    assert pairs.to_dict("records") == [{"row": "a", "chosen": "a1", "rejected": "a2", "margin": pytest.approx(0.8)}]
    assert reply.rank(cands, margin=0.9)[1].empty


def test_02_with_no_message_kept_by_01_says_so_and_asks_nothing(cfg, tmp_path, monkeypatch):
    """A run whose 01 kept no message (every one rejected): 02 writes no candidate, asks the
    generator nothing and reports no refusal shares (it raised KeyError: the empty should_refuse
    column, of objects, selected columns instead of rows)."""
    gen = ScriptedLLM(lambda req, i: "a reply", tmp_path)
    monkeypatch.setattr(Stage, "llm", lambda self, role="generator": gen)
    prompts = pd.DataFrame({"id": ["m0", "m1"], "label": "card_arrival", "text": ["a", "b"], "keep_prompts": False,
                            "reject_reason_prompts": "off_domain", "refusal": None, "seed": [0, 1]})  # fmt: skip
    Stage("01_prompts", cfg, tmp_path / "run").save(prompts, "prompts")
    cands, m2 = text_build.candidates(Stage("02_responses", cfg, tmp_path / "run"))
    assert len(cands) == 0 and gen.requests == [] and m2["candidates"] == 0
    assert m2["refusals_where_due"] is None and m2["refusals_where_not_due"] is None


def test_05_with_no_row_kept_trains_nothing_and_06_still_reads_its_table(cfg, tmp_path):
    """04 kept no row: 05 trains no student and says so with an empty table that has the columns
    06 reads (06 raised KeyError: 'model' on a table with no columns)."""
    run = tmp_path / "run"
    rows = pd.DataFrame({"id": ["m0/c1"], "message": ["a"], "text": ["a reply"], "should_refuse": False,
                         "history": None, "keep": False, "reject_reason": "off_domain"})  # fmt: skip
    Stage("04_filter", cfg, run).save(rows, "dataset")
    Stage("03_judge", cfg, run).save(pd.DataFrame({"row": [], "pair": []}), "pairs")
    training = text_learn.train_stage(Stage("05_train", cfg, run))
    assert len(training) == 0 and {"student", "model", "start", "merged"} <= set(training.columns)
    assert list(Stage("06_evaluate", cfg, run).load("training").columns[:4]) == ["student", "model", "start", "merged"]


def test_02_to_04_with_a_scripted_generator_and_judge(cfg, tmp_path, monkeypatch):
    """The candidates refuse or help by turns; a judge that scores refusal quality both ways keeps
    the refusal for messages that must be refused and a helpful reply for the others, makes a DPO
    pair of each, and its calibration separates a reply from the same reply under another message;
    04 filters the best replies (a planted e-mail address is redacted, a placeholder rejected) and
    exports the kept ones as chat records, refusal examples among them, with their pairs."""
    turn = itertools.count()

    def writer(req, i):
        text = req.messages[-1][1]
        if next(turn) % 2 == 0:
            return f"I'm sorry, I can't help with this: {text} Please visit a branch with your ID."
        if "m1" in text:  # a reply with an e-mail address (04 redacts it), one with a placeholder (rejected)
            return f"About '{text[:24]}': write to jane.doe@example.com and we will check it today."
        if "m3" in text:
            return f"About '{text[:24]}': contact [Your Company Name] and we will check it today."
        return f"About '{text[:24]}': freeze your card in the app and we will check it today."

    def judge(req, i):
        user = req.messages[-1][1]
        if "Reply A:" in user:  # pairwise: the refusal where one is due, else the helpful reply
            a_refuses = re.search(r'Reply A: "(.*?)"', user, re.S).group(1).startswith("I'm sorry")
            return "A" if a_refuses == ("must be refused" in user) else "B"
        text = re.search(r'Customer message: "(.*?)"\n', user, re.S).group(1)
        answer = re.search(r'Assistant reply: "(.*?)"\n', user, re.S).group(1)
        refused = answer.startswith("I'm sorry")
        if "must be refused" in user.split("\n")[0]:
            score = 5 if refused else 1
        elif "legitimate" in user.split("\n")[0]:
            score = 1 if refused else 5
        else:  # helpfulness, policy: the reply must be about this message
            score = 4 if refused or text[:24] in answer else 1
        return json.dumps({"score": score, "rationale": f"scored {score}"})

    gen, jud = ScriptedLLM(writer, tmp_path), ScriptedLLM(judge, tmp_path)
    monkeypatch.setattr(Stage, "llm", lambda self, role="generator": gen)
    monkeypatch.setattr(Stage, "jury", lambda self: {"llm": jud})
    c = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"pair_margin": 0.3, "calibration_rows": 6})})
    seeds = tasks.of(c).seeds(c)
    texts = [f"{t} (m{i})" for i, t in enumerate(list(seeds["text"])[:8])]
    prompts = pd.DataFrame({"id": [f"m{i}" for i in range(8)], "label": list(seeds["label"])[:8], "text": texts,
                            "keep_prompts": True, "reject_reason_prompts": None, "refusal": [True, False] * 4,
                            "seed": range(8)})  # fmt: skip
    Stage("01_prompts", c, tmp_path / "run").save(prompts, "prompts")
    Stage("00_task", c, tmp_path / "run").save(seeds, "seeds")
    cands, m2 = text_build.candidates(Stage("02_responses", c, tmp_path / "run"))
    assert len(cands) == 8 * 3 and cands["refuses"].sum() == 12 and m2["should_refuse"] == 4
    assert len(gen.requests) == 8 and all(
        r.n == 3 and "never promise a refund" in r.messages[0][1] for r in gen.requests
    )
    judged, cands, pairs, m3 = text_build.judge_stage(Stage("03_judge", c, tmp_path / "run"))
    assert cands["judge_score"].notna().all() and cands["judge_refusal_quality_rationale"].notna().all()
    assert judged["best_refuses"].tolist() == judged["should_refuse"].tolist()  # refusal where due, help elsewhere
    assert m3["best_refuses_where_due"] == 1.0 and m3["best_refuses_where_not_due"] == 0.0
    assert pairs["pair"].sum() == 8 and set(pairs["outcome"]) == {"chosen"} and judged["keep_judge"].all()
    assert m3["disagreements"] == 0 and m3["krippendorff_alpha"] == {}  # one juror: no jury to agree
    assert sum("Reply A" in r.messages[-1][1] for r in jud.requests) == 8 * 2  # each pair in both orders
    calib = pd.read_parquet(tmp_path / "run" / "artifacts" / "calibration.parquet")
    assert calib["auc"].tolist() == [1.0] and calib["good"].tolist() == [4] and m3["calibration_auc"] == 1.0
    (tmp_path / "run" / "config.yaml").write_text("task: {type: reply}\n")  # a run folder's config, for the card
    rows, m4 = text_build.filter_stage(Stage("04_filter", c, tmp_path / "run"))
    rejected = rows.set_index("id").loc[~rows.set_index("id")["keep"], "reject_reason"].to_dict()
    assert rejected == {"m3": "format"}, rejected
    sft = [json.loads(x) for x in (tmp_path / "run" / "artifacts" / "export" / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == 7 == m4["kept"] and m4["refusal_examples"] == 4 == sum(r["should_refuse"] for r in sft)
    assert "jane.doe@example.com" not in json.dumps(sft) and rows.set_index("id").at["m1", "pii_found"]
    assert [m["role"] for m in sft[0]["messages"]] == ["system", "user", "assistant"]
    dpo = (tmp_path / "run" / "artifacts" / "export" / "dpo.jsonl").read_text().splitlines()
    assert len(dpo) == m4["dpo_pairs"] == 7  # the pairs of the kept messages
    assert m4["carried"] == 0 and rows["carried_from"].isna().all()

    # the next iteration's 04 carries this one's rows, verdicts kept: its students train on both
    nxt = tmp_path / "run2"
    shutil.copytree(tmp_path / "run" / "artifacts", nxt / "artifacts")
    shutil.copy(tmp_path / "run" / "config.yaml", nxt / "config.yaml")
    (nxt / "provenance.json").write_text(json.dumps({"parent": "run"}))
    rows2, m5 = text_build.filter_stage(Stage("04_filter", c, nxt))
    assert m5["carried"] == 8 and m5["kept"] == 14 and m5["carried_kept"] == 7
    assert rows2.set_index("id").at["run/m3", "reject_reason"] == "format"  # the verdict travels with the row
    assert len((nxt / "artifacts" / "export" / "sft.jsonl").read_text().splitlines()) == 14


def test_an_apology_is_not_a_refusal():
    assert not reply.refuses("I'm sorry for the delay: your card was posted on Monday.")
    assert reply.refuses("I'm sorry, but I can't help with access to another person's account.")
    assert reply.refuses("") and reply.refuses(None)


def test_a_judge_that_prefers_a_position_confirms_no_pair(cfg, tmp_path, monkeypatch):
    """Asked in both orders, a judge that always answers A contradicts itself: every pair is dropped
    as `position`; one that prefers the rejected reply in both orders drops it as `rejected`."""
    pairs = pd.DataFrame({"row": ["a", "b"], "chosen": ["Freeze your card in the app.", "Your top-up is pending."],
                          "rejected": ["No.", "I can't help."], "margin": [0.6, 0.7], "id": ["a", "b"],
                          "text": ["I lost my card", "my top-up failed"], "should_refuse": [False, False]})  # fmt: skip
    for answers, outcome in (("AA", "position"), ("BA", "rejected")):  # chosen as A, then chosen as B
        turn = itertools.count()
        jud = ScriptedLLM(lambda r, i, a=answers, t=turn: a[next(t) % 2], tmp_path)
        monkeypatch.setattr(Stage, "jury", lambda self, j=jud: {"llm": j})
        got = text_build.confirm_pairs(Stage("03_judge", cfg, tmp_path / "run"), pairs)
        assert got["outcome"].tolist() == [outcome] * 2 and not got["pair"].any() and len(jud.requests) == 4
    assert reply.pair_outcome("A", "B") == "chosen" and reply.pair_outcome(None, "B") == "unread"
    assert reply.verdict({"text": "", "first_probs": {"A": 0.2, "B": 0.7}}) == "B"


def test_the_namers_answers_that_are_no_finding_make_no_edit():
    ok = {"name": "refund requests after a purchase", "policy": "say which checks a refund needs before anything",
          "persona": "a first-time customer"}  # fmt: skip
    got = reply.read_gaps([
        ok,
        {"name": "Customers Asking", "policy": "I'm unable to assist you with your order", "persona": "Customers Asking"},
        {"name": "What are your exchange rates at?", "policy": "Provide tracking steps before any promise",
         "persona": "Provide tracking steps before any promise"},
        {"name": "Customers Asking", "policy": "Is this allowed?", "persona": "x" * 3},
        None,
    ])  # fmt: skip
    assert got[0] == ok  # a real finding passes whole
    assert got[1] == {"name": None, "policy": None, "persona": None}  # the name repeats (2 clusters); a reply
    assert got[2] == {"name": None, "policy": None, "persona": None}  # a question; copies of the example
    assert got[3] == {"name": None, "policy": None, "persona": "xxx"}
    assert got[4] == {"name": None, "policy": None, "persona": None}


def test_multi_turn_conversations_reach_the_candidates_the_judge_and_the_exports(cfg, tmp_path, monkeypatch):
    """With diversity.multi_turn_share 0.5 and task.max_turns 3, half the messages become the last
    turn of a conversation of 2 or 3 customer turns: the generator writes the earlier customer
    messages backwards and the assistant's replies forwards (each after the turns before it); 02's
    requests carry the turns in order, the judge reads them as a transcript, and 04's chat records
    and DPO prompts hold them between the system prompt and the last message."""
    c = cfg.model_copy(update={"task": cfg.task.model_copy(update={"max_turns": 3}),
                               "diversity": cfg.diversity.model_copy(update={"multi_turn_share": 0.5})})  # fmt: skip
    assert reply.customer_turns(c, 8) == [1, 2, 1, 3, 1, 2, 1, 3]
    # the estimate counts 01's calls for them: a customer message and a reply per earlier turn
    assert [(p[1], p[2]) for p in plan.earlier_turn_parts(c, 8, 0.0)] == [("earlier turns", 6), ("earlier replies", 6)]
    assert plan.earlier_turn_parts(cfg, 8, 0.0) == []

    def generator(req, i):
        user = req.messages[-1][1]
        if user.startswith("A customer of"):  # an earlier customer message, before the quoted one
            quoted = re.search(r'chat: "(.*?)"\n', user, re.S).group(1)
            return f"before[{quoted[:12]}]"
        return f"reply to ({user[:20]}) after {len(req.messages) - 2} turns"

    gen = ScriptedLLM(generator, tmp_path)
    seeds = tasks.of(c).seeds(c)
    rows = pd.DataFrame({"id": [f"m{i}" for i in range(8)], "label": list(seeds["label"])[:8],
                         "text": [f"message {i}" for i in range(8)], "keep_prompts": True,
                         "reject_reason_prompts": None, "refusal": [False] * 8, "seed": range(8)})  # fmt: skip
    rows = reply.histories(c, rows, gen)
    assert rows["turns"].tolist() == [1, 2, 1, 3, 1, 2, 1, 3] and rows["history"].isna().tolist()[::2] == [True] * 4
    three = json.loads(rows.at[3, "history"])
    assert [t["role"] for t in three] == ["user", "assistant", "user", "assistant"]
    assert three[2]["content"] == "before[message 3]" and three[0]["content"] == "before[before[messa]"
    assert three[1]["content"] == "reply to (before[before[messa]) after 0 turns"  # the first reply: no turns before
    assert three[3]["content"] == "reply to (before[message 3]) after 2 turns"

    # an earlier turn that fails 01's constraint gate ends the chain there, and the note says why
    def check(texts):
        return {
            "reason": ["format" if t.startswith("before[before") else None for t in texts],
            "redacted": [None] * len(texts),
        }

    short = reply.histories(c, rows.drop(columns=["turns", "history", "history_note"]), gen, check=check)
    assert (
        short["turns"].tolist() == [1, 2, 1, 2, 1, 2, 1, 2] and short.at[3, "history_note"] == "earlier turn 2: format"
    )
    assert json.loads(short.at[3, "history"])[0]["content"] == "before[message 3]"

    monkeypatch.setattr(Stage, "llm", lambda self, role="generator": gen)
    Stage("01_prompts", c, tmp_path / "run").save(rows, "prompts")
    Stage("00_task", c, tmp_path / "run").save(seeds, "seeds")
    gen.requests.clear()
    cands, _ = text_build.candidates(Stage("02_responses", c, tmp_path / "run"))
    msgs = gen.requests[3].messages
    assert [r for r, _ in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[-1] == ("user", "message 3") and msgs[1] == ("user", "before[before[messa]")
    items = cands[cands["row"] == "m3"].head(1).assign(should_refuse=False)
    judged = reply.judge_requests(c, items)[0][0].messages[-1][1]
    assert "earlier in the chat:\nCustomer: before[before[messa]\nAssistant: reply to" in judged
    assert "Customer's last message: message 3" in judged
    kept = rows.assign(message=rows["text"], text="a reply", should_refuse=False)
    record = reply.sft_records(c, kept)[3]["messages"]
    assert [m["role"] for m in record] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    pair = pd.DataFrame({"text": ["message 3"], "history": [rows.at[3, "history"]], "chosen": ["a"], "rejected": ["b"]})
    assert len(reply.dpo_records(c, pair)[0]["prompt"]) == 6


def test_a_jury_shows_its_alpha_and_queues_the_candidates_it_split_on(cfg):
    cands = pd.DataFrame({"row": ["m0", "m0", "m1", "m2"], "candidate": [0, 1, 0, 0], "text": ["a", "a", "b", "c"],
                          "reply": ["r0", "r1", "r2", "r3"], "judge_score": [0.5, 0.6, 0.9, None],
                          "judge_spread": [0.25, 0.75, 0.0, None]})  # fmt: skip
    assert cfg.judge.max_spread == 0.5 and text_build.disagreements(cands, cfg)["reply"].tolist() == ["r1"]
    tight = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"max_spread": 0.2})})
    assert text_build.disagreements(cands, tight)["reply"].tolist() == ["r1", "r0"]  # widest first; one juror's: none
    assert text_build.disagreements(cands.drop(columns="judge_spread"), cfg).empty
    m = {"judged_candidates": 4, "messages": 3, "rubric": ["helpfulness", "policy_compliance"], "mean_score": 0.6,
         "judge_unparsed": 1, "kept": 2, "reasons": {}, "best_refuses_where_due": 1.0,
         "best_refuses_where_not_due": 0.0, "pairs": 1, "pairs_by_margin": 1, "pairwise": {}, "jurors": 2,
         "krippendorff_alpha": {"helpfulness": 0.412, "policy_compliance": float("nan")}, "disagreements": 1,
         "nouns": reply.NOUNS}  # fmt: skip
    line = text_build.judge_markdown(m)
    assert "The 2 jurors agree with Krippendorff's alpha helpfulness 0.41, policy_compliance n/a" in line
    assert "1 candidates in the disagreement queue" in line
    assert "Krippendorff" not in text_build.judge_markdown(m | {"krippendorff_alpha": {}, "jurors": 1})
