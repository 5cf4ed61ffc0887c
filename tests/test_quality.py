"""The final filter's quality gates and the 01_prompts generation grid."""

import numpy as np
import pandas as pd
import pytest

from workbench import filters, prompts, quality
from workbench.config import RunConfig


def on_domain(texts):
    """Every text scores 1 on the domain gate: these tests are about the other gates."""
    return np.full((len(texts), 4), 0.5, dtype=np.float32)


def test_pii_is_found_and_redacted():
    text = (
        "Mail john.doe@example.com or +44 20 7946 0958; card 4111 1111 1111 1111; GB82 WEST 1234 5698 7654 32; 10.0.0.1"
    )
    red, kinds = quality.redact(text)
    assert red == "Mail [EMAIL] or [PHONE]; card [CARD]; [IBAN]; [IP]"
    assert kinds == ["email", "phone", "card", "iban", "ip"]
    assert quality.redact("I paid 25.50 on 12/03/2024 for order 123456")[1] == []  # amounts and dates stay


def test_language_gate_keeps_real_english_and_flags_other_languages(root):
    real = pd.read_csv(root / "data" / "banking77" / "test.csv")["text"]
    flagged = [t for t in real if quality.wrong_language(t, "en")]
    assert len(flagged) <= 1  # measured: 1 of 3,080 real English messages
    for t in [
        "Meine Karte ist noch nicht angekommen, was soll ich tun?",
        "Ma carte n'est toujours pas arrivée, que faire ?",
    ]:
        assert quality.wrong_language(t, "en")


def test_filter_marks_each_gate_with_its_reason():
    cfg = RunConfig.model_validate({"task": {"labels": ["a", "b"]}, "diversity": {"entities": [{"name": "Visa"}]}})
    texts = [
        "short",
        "Meine Karte ist noch nicht angekommen, was soll ich tun?",
        "This bullshit app lost my transfer again",
        "Please email me at jane@example.org about my card",
        "My Visa card was charged twice for one coffee",
        "My card was charged twice for one coffee today",
    ]
    rows = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(6)],
            "text": texts,
            "keep_prompts": True,
            "reject_reason_prompts": None,
            "entity": [None, None, None, None, "Visa", "Visa"],
        }
    )
    out = filters.filter_rows(cfg, rows, pd.DataFrame({"id": [], "text": [], "label": []}), on_domain)
    assert list(out["reject_reason"]) == ["too_short", "wrong_language", "profanity", None, None, "entity_missing"]
    assert out.loc[3, "text"] == "Please email me at [EMAIL] about my card" and out.loc[3, "pii_found"] == "email"
    cfg.quality.pii = "reject"
    out = filters.filter_rows(cfg, rows, pd.DataFrame({"id": [], "text": [], "label": []}), on_domain)
    assert out.loc[3, "reject_reason"] == "pii"


def test_grid_hits_the_target_shares_per_label():
    cfg = RunConfig.model_validate(
        {
            "task": {"labels": ["a", "b"], "edge_cases": ["asks two things at once"]},
            "sampling": {"rows_per_label": 10},
            "diversity": {
                "personas": [{"name": "student", "share": 0.6}, "retiree"],
                "difficulty": {"easy": 0.3, "medium": 0.4, "hard": 0.3},
                "entities": [{"name": "Visa", "share": 0.2}],
                "edge_case_share": 0.1,
            },
        }
    )
    seeds = pd.DataFrame({"id": ["s1", "s2"], "text": ["my card is late", "what rate for euros"], "label": ["a", "b"]})
    plan = prompts.generation_requests(cfg, seeds, ["a", "b"])
    for _, g in plan.groupby("label"):
        assert g["persona"].value_counts().to_dict() == {"student": 6, "retiree": 4}
        assert g["difficulty"].value_counts().to_dict() == {"medium": 4, "easy": 3, "hard": 3}
        assert (g["entity"] == "Visa").sum() == 2 and g["edge_case"].notna().sum() == 1
    row = plan.iloc[0]
    system, user = row["request"].messages[0][1], row["request"].messages[1][1]
    assert system.startswith(f"You are {row['persona']}, a customer of")
    assert f"Make it {row['difficulty']}" in user and user.endswith("Output only the message.")
    cov = prompts.coverage(cfg, plan.assign(keep_prompts=True))
    assert (cov["target"] - cov["generated"]).abs().max() < 1e-9


def test_without_diversity_the_prompt_is_the_spines():
    cfg = RunConfig.model_validate({"task": {"labels": ["card_arrival", "b"]}})
    seeds = pd.DataFrame({"id": ["s1"], "text": ["my card is late"], "label": ["card_arrival"]})
    req = prompts.generation_requests(cfg, seeds, ["card_arrival"])["request"][0]
    assert req.messages[0][1] == prompts.PROMPT["system"].format(domain=cfg.task.domain)
    assert req.messages[1][1] == prompts.PROMPT["user"].format(topic="card arrival", examples="- my card is late")


@pytest.mark.parametrize("language", ["en", None])
def test_language_null_turns_the_gate_off(language):
    cfg = RunConfig.model_validate({"quality": {"language": language}})
    rows = pd.DataFrame(
        {
            "id": ["r"],
            "text": ["Meine Karte ist noch nicht angekommen, was soll ich tun?"],
            "keep_prompts": [True],
            "reject_reason_prompts": [None],
        }
    )
    out = filters.filter_rows(cfg, rows, pd.DataFrame({"id": [], "text": [], "label": []}), on_domain)
    assert out.loc[0, "keep"] == (language is None)


# ---------------------------------------------------------------- the regression set (docs/gates.md)


def _regression(root):
    import json

    return [json.loads(line) for line in (root / "data" / "gates" / "regression.jsonl").read_text().splitlines()]


def test_the_regression_set_is_labelled_and_large_enough(root):
    rows = _regression(root)
    assert len(rows) >= 200
    assert sum(bool(r["pii"]) for r in rows) >= 50 and sum(r["toxic"] or r["profane"] for r in rows) >= 40
    assert sum(not r["pii"] and not r["toxic"] and not r["profane"] for r in rows) >= 100
    assert {k for r in rows for k in r["pii"]} <= set(quality.PII_KINDS)


def test_gates_keep_their_measured_precision_and_recall_on_the_regression_set(root):
    """The figures of docs/gates.md, with a little slack: a change that makes a gate worse fails."""
    rows = _regression(root)
    texts = [r["text"] for r in rows]
    probs = quality.offensive_prob(texts)
    pii = [quality.redact(t)[1] for t in texts]
    # every planted PII kind found, on every row that has one
    assert all(set(r["pii"]) <= set(k) for r, k in zip(rows, pii))
    assert sum(bool(k) for r, k in zip(rows, pii) if not r["pii"]) <= 3
    prof = [bool(quality.profanity(t)) for t in texts]
    assert (
        sum(p for r, p in zip(rows, prof) if r["profane"]) >= 19
        and sum(p for r, p in zip(rows, prof) if not r["profane"]) == 0
    )
    tox = [bool(quality.toxic(t, p)) for t, p in zip(texts, probs)]
    assert sum(x for r, x in zip(rows, tox) if r["toxic"]) >= 25
    clean = [x for r, x in zip(rows, tox) if not r["toxic"] and not r["profane"]]
    assert sum(clean) == 0  # no clean row, hard negatives included, is called toxic


@pytest.mark.parametrize(
    "text",
    [
        "my card will die soon",
        "I will find it",
        "Can I shoot you a question about fees?",
        "Order 2024-01-15 never arrived",
        "My order number is 123-45-6789",
        "I was charged 150 200 300",
        "passport X1234567",
        "IBAN GB82 WEST 1234 5698 7654 33 was rejected",  # a bad checksum is no IBAN
        "The exchange rate you are using is bad.This can't be right",  # a missing space is no URL
    ],
)
def test_good_text_is_not_flagged(text):
    assert quality.redact(text)[1] == [] and quality.toxic(text) == [] and quality.profanity(text) == []


def test_the_reported_pii_siblings_are_found_as_what_they_are():
    assert quality.redact("call (415) 555-0132 now")[0] == "call [PHONE] now"  # not "([PHONE]"
    assert quality.redact("iban gb82 west 1234 5698 7654 32")[1] == ["iban"]  # lower case is still an IBAN
    red, kinds = quality.redact("see https://bank.example.com/reset?u=jane from 2001:db8::8a2e:370:7334")
    assert kinds == ["url", "ip"] and red == "see [URL] from [IP]"
    assert quality.profanity("f u c k this sh1t, fuuuck, $hit, f*ck") == ["$hit", "f*ck", "fuck", "fuuuck", "sh1t"]


def test_real_banking77_rows_are_almost_never_flagged(root):
    """Target: at most 0.5% of the 13,083 real messages, which contain no PII and no abuse."""
    real = pd.concat([pd.read_csv(root / "data" / "banking77" / f"{s}.csv") for s in ("train", "test")])["text"]
    real = list(real)
    probs = quality.offensive_prob(real)
    assert sum(bool(quality.toxic(t, p)) for t, p in zip(real, probs)) <= 0.005 * len(real)
    assert sum(bool(quality.redact(t)[1]) for t in real) <= 0.005 * len(real)
