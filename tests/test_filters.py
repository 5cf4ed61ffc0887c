import pandas as pd

from workbench.config import RunConfig
from workbench.filters import filter_rows, verdict
from workbench.gates import ShingleIndex

SEEDS = pd.DataFrame({"id": ["s1"], "text": ["I am still waiting on my card?"], "label": ["card_arrival"]})


def rows(texts):
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(len(texts))],
            "text": texts,
            "label": "card_arrival",
            "keep_prompts": True,
            "reject_reason_prompts": None,
        }
    )


def test_groups_keep_exactly_one_and_record_dup_of():
    texts = [
        "When will my new card arrive at my house?",
        "When will my new card arrive at my house??",  # exact after normalisation
        "when will my new card arrive at my home?",  # near
        "How do I report a stolen card right away?",
        "How do I report a stolen card right now?",
        "i am still waiting on my card",  # copy of a seed
        "ok",
    ]  # too short
    out = filter_rows(RunConfig(), rows(texts), SEEDS)
    assert list(out["reject_reason_filter"]) == [
        None,
        "duplicate",
        "near_duplicate",
        None,
        "near_duplicate",
        "copy_of_seed",
        "too_short",
    ]
    assert list(out["dup_of"]) == [None, "r0", "r0", None, "r3", "s1", None]
    assert list(out["keep"]) == [True, False, False, True, False, False, False]
    assert len(out) == len(texts)  # marks, never drops


def test_filter_is_idempotent_on_its_kept_rows():
    texts = [f"Question {i} about my card delivery and the fee for it" for i in range(30)] + [
        "totally different text"
    ] * 3
    out = filter_rows(RunConfig(), rows(texts), SEEDS)
    kept = out[out["keep"]][["id", "text", "label"]].assign(keep_prompts=True, reject_reason_prompts=None)
    again = filter_rows(RunConfig(), kept, SEEDS)
    assert again["keep"].all()


def test_the_index_verifies_candidates_and_keeps_no_text():
    index = ShingleIndex(threshold=0.5, k=3)
    index.add("a", "abcdefghij klmnop")
    assert index.query("qrstuvwxyz 123456") == (None, 0.0)
    assert index.query("ABCDEFGHIJ, klmnop!") == ("a", 1.0)
    key, sim = index.query("abcdefghij klmnoq")
    assert key == "a" and 0.5 <= sim < 1
    assert "abcdefghij" not in repr(vars(index))


def test_verdict_reports_the_first_rejecting_stage():
    df = pd.DataFrame(
        {
            "keep_a": [True, False, True],
            "reject_reason_a": [None, "x", None],
            "keep_b": [True, False, False],
            "reject_reason_b": [None, "y", "z"],
        }
    )
    v = verdict(df)
    assert list(v["keep"]) == [True, False, False]
    assert list(v["reject_stage"]) == [None, "a", "b"] and list(v["reject_reason"]) == [None, "x", "z"]


def test_redacted_pii_is_not_a_format_defect_and_the_filter_stays_idempotent():
    texts = [
        "Please call me back on +44 20 7946 0958 about my missing card",
        "Dear [recipient's name], my card is late",
    ]
    out = filter_rows(RunConfig(), rows(texts), SEEDS)
    assert list(out["reject_reason_filter"]) == [None, "format"]
    assert out.loc[0, "text"] == "Please call me back on [PHONE] about my missing card"
    kept = out[out["keep"]][["id", "text", "label"]].assign(keep_prompts=True, reject_reason_prompts=None)
    assert filter_rows(RunConfig(), kept, SEEDS)["keep"].all()
