"""Stage 02 candidates (n per request, streamed with their metadata, blind options) and the exports."""

import json

import pandas as pd
from scripted_llm import ScriptedLLM

from workbench import export, responses
from workbench.config import RunConfig
from workbench.live import LiveView

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate"]
CFG = RunConfig.model_validate({"task": {"labels": LABELS}, "responses": {"candidates": 3, "choices": 3}})


def prompt_rows():
    return pd.DataFrame(
        {
            "id": ["gen-card_arrival-0000", "gen-exchange_rate-0000", "gen-exchange_rate-0001"],
            "label": ["card_arrival", "exchange_rate", "exchange_rate"],
            "text": ["Where is my card?", "What rate do you use for euros?", "Here is a message:"],
            "keep_prompts": [True, True, False],
        }
    )


def test_parse_choice_reads_numbers_json_and_names():
    opts = ["a_label", "b_label", "c_label"]
    assert responses.parse_choice("2", None, opts) == "b_label"
    assert responses.parse_choice('{"choice": 3}', {"choice": 3}, opts) == "c_label"
    assert responses.parse_choice("It is a_label.", None, opts) == "a_label"
    assert responses.parse_choice("7", None, opts) is None and responses.parse_choice("no idea", None, opts) is None


def test_candidates_are_n_per_request_streamed_with_metadata_and_blind(tmp_path):
    shortlists = {lab: [lab] + [x for x in LABELS if x != lab] for lab in LABELS}
    replies = iter(["1", "2", "nonsense", "3", "3", "1"])
    llm = ScriptedLLM(lambda req, i: next(replies), tmp_path)
    streamed = []
    view = LiveView(6, {}, tmp_path / "candidates.jsonl")
    cands = responses.generate_candidates(
        CFG, prompt_rows(), llm, shortlists, on_row=lambda r: (streamed.append(r), view(r))
    )
    view.close()
    assert len(llm.requests) == 2 and all(r.n == 3 for r in llm.requests)  # one request per kept prompt, n = 3
    assert len(cands) == 2 * 4 and len(streamed) == 8  # the intended label + 3 model candidates each
    assert len((tmp_path / "candidates.jsonl").read_text().splitlines()) == 8
    assert view.figures()["done"] == view.figures()["total"] == 6  # the model's candidates, as the LLM's bar counts
    first = cands[cands["prompt_id"] == "gen-card_arrival-0000"]
    assert list(first["candidate"]) == [0, 1, 2, 3] and first.iloc[0]["source"] == "intended_label"
    m = first[first["source"] == "model"]
    assert list(m["seed"]) == [CFG.seed, CFG.seed + 1, CFG.seed + 2]
    assert {"model", "prompt_tokens", "completion_tokens", "latency_s", "ttft_s"} <= set(cands.columns)
    for req, row in zip(llm.requests, prompt_rows().itertuples()):  # blind: the intended label is not singled out
        user = req.messages[-1][1]
        assert row.text in user and all(lab.replace("_", " ") in user for lab in LABELS)
        assert "intended" not in user
    opts = m.iloc[0]["options"]
    assert list(m["response_label"][:2]) == [opts[0], opts[1]] and pd.isna(m["response_label"].iloc[2])
    assert m.iloc[2]["response"] == "nonsense"
    rows = responses.attach_responses(prompt_rows(), cands)
    assert list(rows["response"]) == list(rows["label"]) and list(rows["candidates"]) == [3, 3, 0]
    assert rows.loc[1, "model_agreement"] == (sum(opts_ == "exchange_rate" for opts_ in cands.loc[
        (cands["prompt_id"] == "gen-exchange_rate-0000") & (cands["source"] == "model"), "response_label"]) / 3)  # fmt: skip
    assert responses.throughput(cands)["unparseable"] == 1


def test_exports_are_chat_messages_and_trl_preference_pairs(tmp_path):
    rows = pd.DataFrame(
        {
            "id": ["r0", "r1"],
            "text": ["Where is my card?", "Card stolen"],
            "label": ["card_arrival", "lost_or_stolen_card"],
        }
        | {"keep": [True, False], "reject_stage": [None, "judge"], "reject_reason": [None, "label_mismatch"]}
    )
    pairs = pd.DataFrame(
        {
            "prompt_id": ["r0", "r1"],
            "chosen": ["card_arrival", "lost_or_stolen_card"],
            "rejected": ["exchange_rate"] * 2,
        }
        | {"pair": [True, True]}
    )
    funnel = pd.DataFrame({"stage": ["generated", "after judge"], "rows": [2, 1]})
    paths = export.write_exports(CFG, rows, pairs, LABELS, tmp_path, funnel, "task: {}\n", {"generator": "x"}, "MIT")
    sft = [json.loads(x) for x in paths["sft"].read_text().splitlines()]
    assert len(sft) == 1 and [m["role"] for m in sft[0]["messages"]] == ["system", "user", "assistant"]
    assert sft[0]["messages"][-1]["content"] == "card_arrival" and "exchange_rate" in sft[0]["messages"][0]["content"]
    dpo = [json.loads(x) for x in paths["dpo"].read_text().splitlines()]
    assert len(dpo) == 1  # the rejected row's pair is not exported
    assert set(dpo[0]) == {"id", "prompt", "chosen", "rejected"} and dpo[0]["rejected"][0]["content"] == "exchange_rate"
    from datasets import load_from_disk

    assert load_from_disk(str(paths["hf"]))[0]["label"] == "card_arrival"
    card = paths["card"].read_text()
    assert "| judge | label_mismatch | 1 |" in card and "MIT" in card and "config hash" in card
