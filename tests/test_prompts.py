"""Stage 01: rounds of generation, the critic, the gates, feedback from batch k into batch k+1."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from scripted_llm import ScriptedLLM

from workbench import data, gates, prompts
from workbench.config import RunConfig

LABELS = ["card_arrival", "exchange_rate"]
SEEDS = pd.DataFrame(
    {
        "id": ["s1", "s2", "s3", "s4"],
        "text": [
            "My card still has not arrived, it has been ten days.",
            "How long does delivery of a new card usually take?",
            "What rate do you use when I pay in dollars?",
            "Is the euro exchange rate fixed or does it change daily?",
        ],
        "label": ["card_arrival", "card_arrival", "exchange_rate", "exchange_rate"],
    }
)
MESSAGES = [
    "I ordered a replacement card two weeks ago and nothing has come in the post.",
    "Could you tell me whether my debit card was dispatched, the tracking page is blank?",
    "The new card I requested still isn't here and I am travelling on Friday.",
    "Why was I given such a poor rate when I changed pounds into yen last night?",
    "Do you add a margin on top of the interbank rate for Swiss francs?",
    "Which exchange rate applies if I withdraw cash abroad on a weekend?",
    "My parcel with the card seems lost, should I order another one or wait longer?",
    "Is there a fee hidden in the conversion rate for payments in Polish zloty?",
    "The card activation letter arrived but the card itself never did, what now?",
    "Does the rate shown in the app include every charge for euro transfers?",
    "I moved house last month; was my new card sent to the old address instead?",
    "Can I see the historical rates you applied to my transactions in March?",
]


def cfg_for(**prompts_cfg) -> RunConfig:
    return RunConfig.model_validate(
        {
            "task": {"name": "t", "labels": LABELS},
            "data": {"dataset": None},
            "sampling": {"rows_per_label": 2},
            "prompts": {"rounds": 1, "critique": False, **prompts_cfg},
        }
    )


def flat(texts):  # every text equally on-domain: the domain gate passes everything
    return np.ones((len(texts), 4), dtype=np.float32) / 2


class Replies:
    """Generator replies from a fixed list of distinct messages (or a rule); critic replies from a rule."""

    def __init__(self, generate=None, critic=None):
        self.n = 0
        self.generate, self.critic = generate, critic

    def __call__(self, req, _):
        system, user = req.messages[0][1], req.messages[-1][1]
        if system.startswith("You review"):
            return self.critic(user) if self.critic else '{"defects": [], "reason": "fine", "action": "keep"}'
        if self.generate:
            out = self.generate(req, user)
            if out is not None:
                return out
        self.n += 1
        return MESSAGES[(self.n - 1) % len(MESSAGES)]


def test_a_planted_copy_of_a_real_test_row_is_caught_and_counted(root, tmp_path):
    cfg = RunConfig.model_validate(
        {
            "task": {"name": "t", "labels": LABELS},
            "data": {"dataset": "banking77", "seeds_per_label": 2, "dev_per_label": 2},
            "sampling": {"rows_per_label": 2},
            "prompts": {"rounds": 1, "critique": False},
        }
    )
    dev = data.dev_split(cfg)
    planted = dev[dev["label"] == "card_arrival"]["text"].iloc[0]
    index = gates.eval_index(cfg)
    assert all(re.fullmatch(r"[0-9a-f]{40}", h) for h in index.exact)  # hashes, never the rows' text
    assert all(isinstance(x, int) for s in index.sets.values() for x in s)

    def plant(req, user):
        return planted.upper() + "!!" if req.seed == prompts.slot_seed(cfg, 0, 1) else None

    llm = ScriptedLLM(Replies(plant), tmp_path)
    rows = prompts.build_prompts(cfg, data.seeds(cfg), llm, flat, LABELS, eval_index=index)
    hit = rows[rows["reject_reason_prompts"] == "contamination"]
    assert list(hit["id"]) == ["gen-card_arrival-0001"] and list(hit["contaminated_split"]) == ["dev"]
    assert rows["keep_prompts"].sum() == 3
    assert not any(planted.lower() in c.lower() for r in llm.requests for _, c in r.messages)


def test_a_planted_defect_reaches_the_next_batchs_instructions(tmp_path):
    cfg = cfg_for(rounds=2, critique=True, topup_factor=1)
    drop = '{"defects": ["vague"], "reason": "it says nothing specific", "action": "drop"}'

    def critic(user):
        reviewed = user.split("Message to review")[1]
        if MESSAGES[0] in reviewed or MESSAGES[1] in reviewed:  # round 1's two card_arrival prompts
            return drop
        return '{"defects": [], "reason": "ok", "action": "keep"}'

    replies = Replies(critic=critic)
    llm = ScriptedLLM(replies, tmp_path)
    rows = prompts.build_prompts(cfg, SEEDS, llm, flat, LABELS)
    first = rows[rows["round"] == 0]
    assert list(first.loc[first["label"] == "card_arrival", "reject_reason_prompts"]) == ["vague", "vague"]
    second = rows[rows["round"] == 1]
    assert set(second["label"]) == {"card_arrival"} and len(second) == 2  # only the empty cells are topped up
    note = second["feedback"].iloc[0]
    assert "rejected as vague (2 of 2" in note and (MESSAGES[0] in note or MESSAGES[1] in note)
    gen = [r for r in llm.requests if not r.messages[0][1].startswith("You review")]
    assert all(note_ in r.messages[-1][1] for r, note_ in zip(gen[-2:], second["feedback"]))
    assert not any("Avoid that" in r.messages[-1][1] for r in gen[:4])
    rates = prompts.defect_rate(rows)
    assert list(rates["defect_rate"]) == [0.5, 0.0] and rates["top_defect"].iloc[0] == "vague"
    assert rows["keep_prompts"].sum() == 4 and prompts.shortfall(rows).empty


def test_contaminated_rows_never_reach_the_feedback():
    batch = pd.DataFrame(
        {
            "label": ["a", "a"],
            "difficulty": [None, None],
            "text": ["copy of a held-out row", "ok"],
            "keep_contamination": [False, True],
            "reject_reason_contamination": ["contamination", None],
            "reject_reason_constraints": [None, "too_short"],
        }
    )
    notes = prompts.feedback_notes(RunConfig(), batch)
    assert "held-out" not in json.dumps(notes) and "too_short (1 of 2" in notes["a"]


def test_rewrites_are_recritiqued_and_unparseable_critiques_are_kept_and_counted(tmp_path):
    cfg = cfg_for(critique=True)
    fix = '{"defects": ["unrealistic"], "reason": "too formal", "action": "rewrite"}'

    def critic(user):
        if "Please kindly" in user:
            return "KEEP" if "dispatched" not in user else '{"defects": [], "reason": "fine now", "action": "keep"}'
        if MESSAGES[0] in user.split("Message to review")[1]:
            return fix
        if MESSAGES[1] in user.split("Message to review")[1]:
            return "I think this message is fine overall."  # prose: unparseable
        return '{"defects": [], "reason": "fine", "action": "keep"}'

    def generate(req, user):
        if user.startswith("A reviewer said"):
            return "Please kindly check whether my card was dispatched, it is late."
        return None

    rows = prompts.build_prompts(cfg, SEEDS, ScriptedLLM(Replies(generate, critic), tmp_path), flat, LABELS)
    r = rows.set_index("original_text")
    assert r.at[MESSAGES[0], "rewritten"] and r.at[MESSAGES[0], "text"].startswith("Please kindly check")
    assert r.at[MESSAGES[0], "recritique_action"] == "keep" and r.at[MESSAGES[0], "keep_prompts"]
    assert not r.at[MESSAGES[1], "critique_parsed"] and r.at[MESSAGES[1], "keep_prompts"]
    assert r.at[MESSAGES[1], "critique_raw"] == "I think this message is fine overall."


def test_cells_that_stay_empty_are_topped_up_then_named(tmp_path):
    cfg = cfg_for(rounds=3, topup_factor=2)
    rows = prompts.build_prompts(
        cfg,
        SEEDS,
        ScriptedLLM(Replies(lambda req, user: "" if "exchange rate" in user else None), tmp_path),
        flat,
        LABELS,
    )
    assert rows.groupby("round").size().to_dict() == {0: 4, 1: 4, 2: 4}  # 2 missing × 2 attempts per top-up
    assert set(rows.loc[rows["round"] > 0, "label"]) == {"exchange_rate"}
    short = prompts.shortfall(rows)
    assert list(short["label"]) == ["exchange_rate"] and short["missing"].sum() == 2
    assert (rows.loc[~rows["keep_prompts"], "reject_reason_prompts"] == "empty").all()


def test_surplus_top_ups_are_down_sampled_with_a_reason(tmp_path):
    cfg = cfg_for(rounds=2, topup_factor=3)
    state = {"n": 0}

    def first_fails(req, user):
        state["n"] += 1
        return "" if state["n"] == 1 else None

    rows = prompts.build_prompts(cfg, SEEDS, ScriptedLLM(Replies(first_fails), tmp_path), flat, LABELS)
    assert (rows["round"] == 1).sum() == 3 and rows["keep_prompts"].sum() == 4
    over = rows[rows["reject_reason_prompts"] == "over_represented"]
    assert len(over) == 2 and over["balance_detail"].str.contains("already filled").all()


@pytest.mark.parametrize(
    ("counts", "targets", "tol", "want"),
    [
        (
            {"easy": 2, "medium": 2, "hard": 1},
            {"easy": 1, "medium": 1, "hard": 1},
            0.5,
            {"easy": 2, "medium": 2, "hard": 1},
        ),
        (
            {"easy": 4, "medium": 2, "hard": 2},
            {"easy": 1, "medium": 1, "hard": 1},
            0.3,
            {"easy": 3, "medium": 2, "hard": 2},
        ),
        (
            {"easy": 2, "medium": 2, "hard": 0},
            {"easy": 1, "medium": 1, "hard": 1},
            0.1,
            {"easy": 2, "medium": 2, "hard": 0},
        ),
        ({"a": 6, "b": 1}, {"a": 1, "b": 1}, 0.5, {"a": 3, "b": 1}),
    ],
)
def test_balanced_counts_trim_only_what_is_over_represented(counts, targets, tol, want):
    assert gates.balanced_counts(counts, targets, tol) == want


def test_an_earlier_iterations_prompt_is_seen_before(tmp_path):
    earlier = pd.DataFrame({"id": ["001-x/gen-a-0000"], "text": [MESSAGES[0]]})
    rows = prompts.build_prompts(cfg_for(), SEEDS, ScriptedLLM(Replies(), tmp_path), flat, LABELS, earlier=earlier)
    hit = rows[rows["reject_reason_prompts"] == "seen_before"]
    assert list(hit["dup_of"]) == ["001-x/gen-a-0000"]


def test_the_domain_gate_scores_with_minilm(tmp_path):
    from workbench import embed

    off = "What is the best recipe for chocolate cake with cherries?"

    def generate(req, user):
        return off if req.seed == prompts.slot_seed(cfg, 1, 0) else None

    cfg = cfg_for()
    rows = prompts.build_prompts(
        cfg, SEEDS, ScriptedLLM(Replies(generate), tmp_path), lambda t: embed.embed(t, tmp_path), LABELS
    )
    r = rows.set_index("text")
    assert r.at[off, "reject_reason_prompts"] == "off_domain" and r.at[off, "domain_score"] < 0.4
    assert rows.loc[rows["text"] != off, "domain_score"].min() >= 0.4


def test_refusal_worthy_prompts_follow_the_configured_share():
    cfg = RunConfig.model_validate(
        {"task": {"labels": LABELS, "must_refuse": ["access to someone else's account"]},
         "sampling": {"rows_per_label": 10}, "diversity": {"refusal_share": 0.3}}
    )  # fmt: skip
    plan = prompts.generation_requests(cfg, SEEDS, LABELS)
    assert plan.groupby("label")["refusal"].sum().to_dict() == {"card_arrival": 3, "exchange_rate": 3}
    users = [r.messages[-1][1] for r in plan["request"]]
    assert [("must refuse (access to someone else's account)" in u) for u in users] == list(plan["refusal"])
    with pytest.raises(ValueError, match="task.must_refuse is empty"):  # nothing stands in for the list
        RunConfig.model_validate({"task": {"labels": LABELS}, "diversity": {"refusal_share": 0.3}})


def test_with_the_critic_off_no_critique_is_asked_and_the_columns_are_there(tmp_path):
    llm = ScriptedLLM(Replies(), tmp_path)
    rows = prompts.build_prompts(cfg_for(critique=False, rounds=2), SEEDS, llm, flat, LABELS)
    assert not any(r.messages[0][1].startswith("You review") for r in llm.requests)
    assert rows["keep_critique"].all() and not rows["rewritten"].any() and rows["critique_raw"].isna().all()


OFF_DOMAIN = [
    "What is the best recipe for chocolate cake?",
    "Who won the football game last night?",
    "How do I install python on windows?",
    "Tell me a joke about cats",
    "What's the weather in Paris tomorrow?",
    "Can you recommend a good movie?",
    "My dog keeps barking at night",
    "Write me a poem about the sea",
    "I want to book a hotel room in Rome",
    "As an AI language model I cannot help with that",
]


def test_the_default_domain_threshold_passes_real_rows_and_stops_off_domain_ones(root):
    """The measurement behind prompts.min_domain_score's default, on real Banking77 dev rows."""
    from workbench import embed
    from workbench.config import load_config
    from workbench.files import cache_dir

    cfg, _ = load_config(root / "configs" / "smoke.yaml")
    seeds, dev = data.seeds(cfg), data.dev_split(cfg)
    reference = [*seeds["text"], *(data.label_topic(cfg, label) for label in cfg.task.label_names())]
    cache = cache_dir()
    ref = embed.embed(reference, cache)
    real = gates.domain_scores(embed.embed(list(dev["text"]), cache), ref)
    off = gates.domain_scores(embed.embed(OFF_DOMAIN, cache), ref)
    threshold = cfg.prompts.min_domain_score
    assert (real >= threshold).mean() >= 0.95 and (off < threshold).all()


def test_generator_reply_that_is_empty_is_a_reject_with_its_reason(tmp_path):
    cfg = cfg_for(rounds=1)
    rows = prompts.build_prompts(
        cfg, SEEDS, ScriptedLLM(Replies(lambda req, user: "" if "exchange rate" in user else None), tmp_path), flat,
        LABELS,
    )  # fmt: skip
    empty = rows[rows["label"] == "exchange_rate"]
    assert len(empty) and (empty["reject_reason_prompts"] == "empty").all() and not empty["keep_prompts"].any()
    assert empty["id"].notna().all() and rows["id"].is_unique
