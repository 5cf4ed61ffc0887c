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
    assert req.messages[0][1] == prompts.SYSTEM.format(domain=cfg.task.domain)
    assert req.messages[1][1] == prompts.USER.format(topic="card arrival", examples="- my card is late")


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
