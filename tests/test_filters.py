from pathlib import Path

import numpy as np
import pandas as pd

from workbench.config import RunConfig
from workbench.filters import filter_rows, verdict
from workbench.gates import ShingleIndex

SEEDS = pd.DataFrame({"id": ["s1"], "text": ["I am still waiting on my card?"], "label": ["card_arrival"]})


def same(texts):
    """Every text on the domain: identical unit vectors (domain score 1)."""
    return np.full((len(texts), 4), 0.5, dtype=np.float32)


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
    out = filter_rows(RunConfig(), rows(texts), SEEDS, same)
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
    out = filter_rows(RunConfig(), rows(texts), SEEDS, same)
    kept = out[out["keep"]][["id", "text", "label"]].assign(keep_prompts=True, reject_reason_prompts=None)
    again = filter_rows(RunConfig(), kept, SEEDS, same)
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
    out = filter_rows(RunConfig(), rows(texts), SEEDS, same)
    assert list(out["reject_reason_filter"]) == [None, "format"]
    assert out.loc[0, "text"] == "Please call me back on [PHONE] about my missing card"
    kept = out[out["keep"]][["id", "text", "label"]].assign(keep_prompts=True, reject_reason_prompts=None)
    assert filter_rows(RunConfig(), kept, SEEDS, same)["keep"].all()


def test_every_pii_kind_is_redacted_in_the_text_that_trains_and_in_the_reject_pile():
    planted = {
        "email": "Write to jane.doe@example.com about my card",
        "phone": "Please ring me on +44 7700 900123 about my card",
        "card": "My card 4111 1111 1111 1111 has not arrived yet",
        "iban": "Send it to GB82 WEST 1234 5698 7654 32 for my card",
        "ip": "The app logged me in from 192.168.10.24 and my card stopped",
        "address": "My card never came to 221B Baker Street in London",
        "name": "Hello, my name is Maria Lopez and my card is late",
    }
    out = filter_rows(
        RunConfig(), rows(list(planted.values()) + ["My card 5500 0000 0000 0004 has not arrived yet!"]), SEEDS, same
    )
    for i, (kind, text) in enumerate(planted.items()):
        assert out.loc[i, "pii_found"] == kind, (kind, out.loc[i, "text"])
        assert f"[{kind.upper()}]" in out.loc[i, "text"] and out.loc[i, "text"] != text
        assert out.loc[i, "keep"], (kind, out.loc[i, "reject_reason"])
    # a row rejected later (a duplicate once redacted) shows the redacted text in the reject pile too
    assert out.loc[7, "reject_reason"] == "duplicate" and out.loc[7, "dup_of"] == "r2"
    assert out.loc[7, "text"] == "My card [CARD] has not arrived yet!"


def test_toxicity_and_off_domain_are_reasons_and_the_threshold_is_the_filters():
    texts = ["I will kill you if my card is not here by Monday", "Is my card coming this week or next one?"]

    def apart(t):  # the rows point one way, the domain reference (seeds, labels, description) another
        return np.array([[1, 0] if x in texts else [0, 1] for x in t], dtype=np.float32)

    out = filter_rows(RunConfig(), rows(texts), SEEDS, same)
    assert list(out["reject_reason_filter"]) == ["toxicity", None] and out.loc[0, "toxic_found"] == "i will kill you"
    cfg = RunConfig.model_validate({"filter": {"toxicity": "allow", "min_domain_score": 0.5}})
    out = filter_rows(cfg, rows(texts), SEEDS, apart)
    assert list(out["reject_reason_filter"]) == ["off_domain", "off_domain"]
    assert (out["filter_domain_score"] == 0).all()


def test_rewrite_is_checked_again_and_a_failed_rewrite_is_uncertain(tmp_path):
    from scripted_llm import ScriptedLLM

    replies = iter(
        [
            "When is my card arriving, dear bank? I need it soon.",
            "",
            "When is my card arriving, dear bank?? I need it soon!",
        ]
    )
    llm = ScriptedLLM(lambda req, i: next(replies), tmp_path)
    cfg = RunConfig.model_validate({"filter": {"rewrite": "as a polite retired customer"}})
    texts = ["Where is my new card, it is late", "My card has not come in the post yet", "Card not here"]
    out = filter_rows(cfg, rows(texts), SEEDS, same, llm)
    assert list(out["reject_reason_filter"]) == [None, "uncertain", "duplicate"]
    assert out.loc[0, "original_text"] == texts[0] and out.loc[0, "text"].startswith("When is my card arriving, dear")
    assert "as a polite retired customer" in llm.requests[0].messages[-1][1]


def test_the_row_checks_give_the_same_verdicts_in_several_processes():
    """filter.num_proc > 1 runs constraints, PII and toxicity through datasets.map in processes."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import filters as bench

    from workbench import filters as wf
    from workbench.config import load_config

    cfg, _ = load_config(Path(__file__).resolve().parents[1] / "configs" / "banking77.yaml", ["quality.language=null"])
    rows = bench.workload(12_000, seed=1)
    out = {}
    for n in (1, 2):
        r = rows.copy()
        r["keep_filter"], r["reject_reason_filter"] = True, None
        from workbench import gates

        gates.constraints(cfg, r, r.index, gate="filter", num_proc=n)
        wf.toxicity(r, r.index[r["keep_filter"]], num_proc=n)
        out[n] = r
    cols = ["text", "keep_filter", "reject_reason_filter", "pii_found", "toxic_found"]
    pd.testing.assert_frame_equal(out[1][cols], out[2][cols])
    assert out[2]["pii_found"].notna().sum() > 100 and (out[2]["reject_reason_filter"] == "toxicity").sum() > 50
