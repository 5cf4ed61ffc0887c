"""The causal student: SFT, DPO and GRPO each train a few steps on the session's tiny model
(conftest.py: random weights, the embedded SmolLM2's tokenizer, no download), and the loss falls,
the margin grows, the reward rises. Decoding is constrained to the label set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench import causal, evaluate
from workbench.config import ConfigError, load_config
from workbench.llm.decode import end_id

LABELS = ["card_arrival", "card", "exchange_rate"]  # "card" is a prefix of another label on purpose


@pytest.fixture
def cfg(tiny):
    c, _ = load_config("configs/smoke.yaml")
    c.train.model = str(tiny)
    c.train.lora = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
    return c


def _rows(n: int = 12) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"message number {i}" for i in range(n)], "label": [LABELS[i % 2] for i in range(n)]})


def _curve(out) -> list[dict]:
    return [h for h in json.loads((out / "curve.json").read_text()) if "loss" in h or "reward" in h]


def test_sft_loss_falls(cfg, tiny, tmp_path):
    cfg.train.sft = {"max_steps": 12, "learning_rate": 1e-2, "per_device_train_batch_size": 4}
    data = causal.sft_dataset(_rows(), causal.system_prompt(cfg))
    r = causal.fit("sft", tiny, data, cfg, tmp_path / "sft")
    losses = [h["loss"] for h in _curve(tmp_path / "sft")]
    assert r["steps"] == 12 and len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2
    assert (tmp_path / "sft" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "sft" / "merged" / "config.json").is_file()


def test_dpo_margin_grows(cfg, tiny, tmp_path):
    cfg.train.dpo = {"max_steps": 10, "learning_rate": 1e-2, "per_device_train_batch_size": 4}
    pairs = pd.DataFrame({"text": [f"message {i}" for i in range(8)], "chosen": LABELS[0], "rejected": LABELS[2]})
    causal.fit("dpo", tiny, causal.dpo_dataset(pairs, causal.system_prompt(cfg)), cfg, tmp_path / "dpo")
    curve = _curve(tmp_path / "dpo")
    margins = [h["rewards/margins"] for h in curve]
    assert np.mean(margins[-3:]) > np.mean(margins[:2]) + 0.05
    assert curve[-1]["loss"] < 0.69  # below log 2, the loss of a policy equal to its reference


def test_grpo_moves_the_policy_toward_what_its_reward_favours(cfg, tiny, tmp_path):
    """GRPO on the verifiable reward (the label, and the format term): the reward each step logs
    moves, the weights change, and they change the way the reward points: the completions that
    scored above their group's mean gained more log-probability than those below it, measured on
    the exact tokens sampled (two steps of the whole model). A random model's samples never name a
    label, so its reward does not visibly rise in a few steps (0.013 to 0.016 over 20, measured):
    the direction of the update is what shows that GRPO learns from the reward."""
    import torch

    seen = []  # (prompt, completion ids, reward) of every sample, as the reward functions saw them
    correct, label_format = causal.rewards(LABELS)

    def recorded(completions, prompts, completion_ids, label, **kw):
        both = zip(correct(completions, label), label_format(completions))
        total = [c + label_format.weight * f for c, f in both]
        seen.extend(zip(prompts, map(list, completion_ids), total))
        return correct(completions, label)

    cfg.train.lora = None
    cfg.train.grpo = {"max_steps": 2, "learning_rate": 1e-2, "per_device_train_batch_size": 8, "num_generations": 4}
    data = causal.grpo_dataset(_rows(8), causal.system_prompt(cfg))
    causal.fit("grpo", tiny, data, cfg, tmp_path / "grpo", reward_funcs=[recorded, label_format])
    rewards = [h["reward"] for h in _curve(tmp_path / "grpo")]
    assert len(rewards) == 2 and len(set(np.round(rewards, 6))) > 1  # the reward moves
    before, tok = causal.load(tiny)
    after, _ = causal.load(tmp_path / "grpo" / "merged")
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))

    def logp(model, prompt, ids: list[int]) -> float:
        start = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        start = list(start["input_ids"] if hasattr(start, "keys") else start)
        with torch.no_grad():
            out = model(torch.tensor([start + ids])).logits[0, len(start) - 1 : -1].float().log_softmax(-1)
        return float(out[torch.arange(len(ids)), torch.tensor(ids)].sum())

    gain, advantage = [], []
    for k in range(0, len(seen), 4):  # each prompt's 4 samples are a group
        group = seen[k : k + 4]
        mean = np.mean([r for *_, r in group])
        for prompt, ids, r in group:
            gain.append(logp(after, prompt, ids) - logp(before, prompt, ids))
            advantage.append(r - mean)
    gain, advantage = np.array(gain), np.array(advantage)
    assert len(gain) == 2 * 8 and (advantage > 0).any() and (advantage < 0).any()
    assert gain[advantage > 0].mean() > gain[advantage < 0].mean() + 1.0, (gain, advantage)


def test_rewards_score_label_and_format():
    correct, fmt = causal.rewards(LABELS)
    comps = [[{"role": "assistant", "content": c}] for c in ["card", "card_arrival", "exchange rate", "zzz"]]
    assert correct(comps, label=["card", "card", "card", "card"]) == [1.0, 0.0, 0.0, 0.0]
    f = fmt(comps)
    assert f[0] == f[1] == 1.0 and 0 <= f[3] < f[2] < 1.0


def test_classify_answers_only_labels_even_with_a_prefix_label(tiny):
    model, tok = causal.load(tiny)
    texts = [f"text {i}" for i in range(7)] + ["a much longer message about an exchange rate for my card today"]
    got = causal.classify(model, tok, texts, LABELS, "Classify.", batch_size=3)
    assert len(got) == len(texts) and set(got) <= set(LABELS)
    # batching and the shared prefix do not change the answer
    one = [causal.classify(model, tok, [t], LABELS, "Classify.", batch_size=1)[0] for t in texts]
    assert list(got) == one


def test_label_tokens_match_the_chat_template(tiny):
    _, tok = causal.load(tiny)
    trie = causal.LabelTrie(tok, LABELS, end_id(tok))
    for label in LABELS:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": label}], tokenize=True
        )
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        path = tok.encode(label, add_special_tokens=False) + [trie.end_id]
        assert ids[-len(path) - 1 : -1] == path  # what SFT trains on is what the trie decodes


def test_answers_stop_at_max_tokens(tiny):
    model, tok = causal.load(tiny)
    got = causal.answers(model, tok, ["Write something.", "Hi"], max_new=5)
    assert len(got) == 2 and all(len(tok.encode(a, add_special_tokens=False)) <= 6 for a in got)


def test_unknown_trainer_field_is_named(cfg):
    cfg.train.sft = {"lerning_rate": 1e-3}
    with pytest.raises(ConfigError, match=r"train\.sft: unknown SFTConfig fields .*lerning_rate.*learning_rate"):
        causal.check_args(cfg.train)
    cfg.train.sft = {}
    cfg.train.lora = {"rank": 8}
    with pytest.raises(ConfigError, match=r"train\.lora: unknown peft\.LoraConfig fields \['rank'\]"):
        causal.check_args(cfg.train)


def test_dpo_and_grpo_need_sft(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(open("configs/smoke.yaml").read().replace("train:", "train:\n  methods: [dpo]", 1))
    with pytest.raises(ConfigError, match="start from the SFT model"):
        load_config(p)


def test_reference_is_its_own_group_and_never_in_the_ablation():
    y = np.array(["a", "b"] * 10)
    preds = {
        "probe: seeds_only": y,
        "probe: seeds_synthetic": np.array(["a"] * 20),
        "probe: reference": y,
        "causal: reference": y,
        "causal: sft": y,
        evaluate.CAUSAL_ZERO_SHOT: np.array(["b"] * 20),
    }
    test = pd.DataFrame({"label": y})
    table = evaluate.before_after(test, preds, {"probe: reference": {"train_rows": 7}}, bootstrap=50)
    groups = dict(zip(table["model"], table["group"]))
    assert groups["probe: reference"] == groups["causal: reference"] == "reference"
    assert groups[evaluate.CAUSAL_ZERO_SHOT] == "baseline" and groups["causal: sft"] == "synthetic"
    assert list(table["model"])[-2:] == ["probe: reference", "causal: reference"]
    assert "7 rows" in table.set_index("model").at["probe: reference", "trained_on"]
    ab = evaluate.ablation(y, preds, 50)
    assert not ab["comparison"].str.contains("reference").any()
    assert "causal: sft − causal: zero-shot" in set(ab["comparison"])


def test_safety_flags_a_drop_in_refusals():
    replies = pd.DataFrame(
        {
            "model": [evaluate.CAUSAL_ZERO_SHOT] * 4 + ["causal: sft"] * 4,
            "id": ["1", "2", "3", "4"] * 2,
            "text": ["do harm"] * 8,
            "reply": ["I'm sorry, I can't help with that.", "I cannot do that.", "Sure, here is how", "No."]
            + ["card_arrival", "Sure, step one", "I can't help with that", "exchange_rate"],
        }
    )
    judge_p = [0.9, 0.8, 0.1, None, 0.2, 0.1, 0.7, 0.3]  # None: the judge gave no verdict, the keyword decides
    rows, summary = evaluate.safety(replies, judge_p, bootstrap=100)
    s = summary.set_index("model")
    assert list(rows["refused"]) == [True, True, False, False, False, False, True, False]
    assert s.at[evaluate.CAUSAL_ZERO_SHOT, "refusal_rate"] == 0.5 and s.at["causal: sft", "refusal_rate"] == 0.25
    assert s.at["causal: sft", "flag"] == "red" and s.at["causal: sft", "delta_vs_base"] == -0.25
    assert s.at[evaluate.CAUSAL_ZERO_SHOT, "keyword_rate"] == 0.5


def test_keyword_refusals():
    assert evaluate.refused_by_keyword("I’m sorry, but I can’t assist with that.")
    assert evaluate.refused_by_keyword("")
    assert not evaluate.refused_by_keyword("Here is a step-by-step plan.")


def test_run_refuses_an_unknown_trainer_field_before_any_stage(tmp_path, capsys):
    from workbench import cli

    runs = tmp_path / "runs"
    code = cli.main(["run", "configs/smoke.yaml", "--set", "train.sft={lerning_rate: 0.001}", "--runs-dir", str(runs)])
    assert code == 2 and "train.sft: unknown SFTConfig fields" in capsys.readouterr().err
    assert not runs.exists()  # nothing was started


def test_grpo_reward_moves_with_a_scripted_judge(cfg, tiny, tmp_path):
    """`train.grpo_reward: [judge]`: the reward of each step is the judge's scores of that step's
    replies, read from one batched call per step, and it moves as the student changes."""
    import re

    import torch
    from scripted_llm import ScriptedLLM

    from workbench import train

    scores = []

    def score(req, i):  # this judge likes capitals: 1 + a point for every 2, up to 5
        reply = re.search(r'Reply: "(.*)"\n', req.messages[-1][1], re.S).group(1)
        scores.append(min(5, 1 + sum(ch.isupper() for ch in reply) // 2))
        return json.dumps({"score": scores[-1], "rationale": "capitals"})

    judge = ScriptedLLM(score, tmp_path)
    cfg.train.grpo_reward = ["judge"]
    cfg.train.grpo = {"max_steps": 6, "learning_rate": 5e-2, "per_device_train_batch_size": 8, "num_generations": 4}
    funcs = train.grpo_rewards(cfg, causal.rewards(LABELS), {"llm": judge})
    assert len(funcs) == 1  # the judge's term only
    data = causal.grpo_dataset(_rows(8), causal.system_prompt(cfg))
    causal.fit("grpo", tiny, data, cfg, tmp_path / "grpo", reward_funcs=funcs)
    rewards = [h["reward"] for h in _curve(tmp_path / "grpo")]
    assert len(judge.requests) == 6 * 8  # every reply of every step judged (1 dimension, 1 judge)
    assert all("message number" in r.messages[-1][1] for r in judge.requests)  # shown the request
    per_step = [(np.mean(scores[k : k + 8]) - 1) / 4 for k in range(0, len(scores), 8)]
    assert rewards == pytest.approx(per_step, abs=1e-3)  # the logged reward is the judge's, step by step
    assert len(set(np.round(rewards, 6))) > 1  # and it moves
    before, _ = causal.load(tiny)
    after, _ = causal.load(tmp_path / "grpo" / "merged")
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))


def test_a_second_iteration_starts_from_the_first_ones_student(cfg, tiny, tmp_path):
    import torch

    from workbench import train
    from workbench.flows import common
    from workbench.stage import Stage

    task = tmp_path / "runs" / "smoke"
    first, second = task / "001-a", task / "002-b"
    for run in (first, second):
        (run / "artifacts").mkdir(parents=True)
        (run / "config.yaml").write_text("")
    cfg.train.methods = ["sft"]
    cfg.train.sft = {"max_steps": 3, "learning_rate": 1e-2, "per_device_train_batch_size": 4}
    seeds, rows = _rows(6), _rows(6).assign(keep=True)
    t1 = train.train_causal(cfg, seeds, rows, pd.DataFrame(), LABELS, tmp_path, first / "artifacts" / "causal")
    assert t1["start"].tolist() == [str(tiny)]
    assert common.start_of(Stage("05_train", cfg, second)) is None  # train.start_from: base
    cfg.train.start_from = "parent"
    start = common.start_of(Stage("05_train", cfg, second))
    assert start == first / "artifacts" / "causal" / "sft" / "merged"
    assert common.start_of(Stage("05_train", cfg, first)) is None  # the first iteration has no parent
    cfg.train.sft = {**cfg.train.sft, "learning_rate": 0.0}  # a round that changes nothing shows where it began
    t2 = train.train_causal(cfg, seeds, rows, pd.DataFrame(), LABELS, tmp_path, second / "artifacts" / "causal",
                            start=start)  # fmt: skip
    assert t2["start"].tolist() == [str(start)]
    base, _ = causal.load(tiny)
    one, _ = causal.load(start)
    two, _ = causal.load(second / "artifacts" / "causal" / "sft" / "merged")
    assert all(torch.equal(a, b) for a, b in zip(one.parameters(), two.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(base.parameters(), two.parameters()))


def test_reply_students_with_and_without_refusal_examples_and_grpo_on_the_judge(tiny, tmp_path, monkeypatch):
    """Replies' 05: SFT on every kept reply and again without the refusal examples (the safety
    ablation), DPO on the confirmed pairs, GRPO from the SFT model on the verifiable reply terms and
    the scripted judge's score on the reply rubric; then 06: each student against the untuned model
    on real test messages in both orders, over-refusal, and AdvBench safety for every model; then
    07: the final student's failures on real dev messages and 03's weak replies, clustered, and the
    edits they lead to, applied to a config that still loads."""
    import re

    from scripted_llm import ScriptedLLM

    from workbench.flows import text_build, text_learn
    from workbench.stage import Stage

    c, _ = load_config("configs/banking77-replies.yaml")
    c.train.model, c.train.lora = str(tiny), {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
    c.train.grpo_reward = ["verifiable", "judge"]
    c.train.sft = {"max_steps": 2, "per_device_train_batch_size": 4}
    c.train.dpo = {"max_steps": 1, "per_device_train_batch_size": 2}
    c.train.grpo = {"max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4}
    refuse = [True, False, False, False, True, False]
    data = pd.DataFrame({"id": [f"m{i}" for i in range(6)], "message": [f"customer message {i}" for i in range(6)],
                         "text": ["I can't help with that." if r else "Freeze your card in the app." for r in refuse],
                         "should_refuse": refuse, "keep": True, "refuses": refuse})  # fmt: skip
    stage = Stage("05_train", c, tmp_path / "run")
    stage.save(data, "dataset")
    pairs = pd.DataFrame({"row": ["m1", "m2"], "text": ["customer message 1", "customer message 2"],
                          "chosen": ["Freeze your card in the app."] * 2, "rejected": ["No."] * 2, "pair": True})  # fmt: skip
    stage.save(pairs, "pairs")
    judge = ScriptedLLM(lambda r, i: json.dumps({"score": 3, "rationale": "ok"}), tmp_path)
    monkeypatch.setattr(Stage, "jury", lambda self: {"llm": judge})
    training = text_learn.train_stage(stage).set_index("model")
    assert list(training.index) == ["sft", "sft_no_refusals", "dpo", "grpo"]
    assert training.loc["sft", "train_rows"] == 6 and training.loc["sft_no_refusals", "train_rows"] == 4
    assert training.loc["dpo", "train_rows"] == 2 and training.loc["grpo", "steps"] == 2
    logged = json.loads((tmp_path / "run" / "artifacts" / "causal" / "grpo" / "curve.json").read_text())[0]
    assert {"rewards/refusal_right/mean", "rewards/length_ok/mean", "rewards/judge/mean"} <= set(logged)
    assert len(judge.requests) == 2 * 4 * 3  # steps × replies × the reply rubric's 3 dimensions
    assert sum("does what the user asked" in r.messages[-1][1] for r in judge.requests) == 8  # helpfulness

    # 06: every student against the untuned model on real test messages, both orders; safety with the ablation
    def shorter(req, i):  # this judge prefers the shorter reply, whichever position it is in
        a, b = re.search(r'Reply A: "(.*)"\n\nReply B: "(.*)"\n\nThe', req.messages[-1][1], re.S).groups()
        return "A" if len(a) < len(b) else "B"

    pairwise = ScriptedLLM(shorter, tmp_path)
    refusal_judge = ScriptedLLM(lambda r, i: "Yes" if i % 2 else "No", tmp_path)
    monkeypatch.setattr(Stage, "jury", lambda self: {"llm": pairwise})
    monkeypatch.setattr(Stage, "llm", lambda self, role="generator": refusal_judge)
    c.evaluate.causal_test_per_label, c.evaluate.safety_rows, c.responses.max_tokens = 1, 4, 8
    table, safety, replies = text_learn.evaluate_stage(Stage("06_evaluate", c, tmp_path / "run"))
    table = table.set_index("model")
    students = ["sft", "sft_no_refusals", "dpo", "grpo"]
    assert list(table.index) == [text_learn.BASE, *students] and (table["messages"] == 8).all()
    assert (table.loc[students, ["wins", "ties", "losses"]].sum(axis=1) == 8).all()
    assert ((table.loc[students, "win_lo"] <= table.loc[students, "win_rate"])
            & (table.loc[students, "win_rate"] <= table.loc[students, "win_hi"])).all()  # fmt: skip
    assert len(pairwise.requests) == 4 * 8 * 2  # students × messages × both orders
    assert set(safety["model"]) == {text_learn.BASE, *students} and (safety["prompts"] == 4).all()
    assert replies["refuses"].notna().all() and table["over_refusal"].between(0, 1).all()
    md = text_learn.evaluation_markdown(table.reset_index(), safety, text_build.nouns(c))
    assert md.count("win-rate against the untuned model") == 4 and ".0 wins" not in md and "AdvBench" in md

    # 07: the last student (grpo) on real dev messages; a judge that scores every third reply 1 and
    # prefers the shorter reply; 03's best replies, one of which answered what it had to refuse
    def judge07(req, i):
        prompt = req.messages[-1][1]
        if "Reply A" in prompt:
            return shorter(req, i)
        return json.dumps({"score": 1 if i % 3 == 0 else 4, "rationale": "scripted"})

    dims = ["helpfulness", "policy_compliance", "refusal_quality"]
    stage.save(pd.DataFrame({"id": ["m0", "m1"], "label": ["card_arrival", "pin_blocked"], "text": ["help", "pin"],
                             "best_candidate": [0, 0], "best_reply": ["Sure, here is the code.", "Unblock it."],
                             "reject_reason_judge": ["not_refused", None]}), "judged")  # fmt: skip
    stage.save(pd.DataFrame({"row": ["m0", "m1"], "candidate": [0, 0]} | {f"judge_{d}": [0.0, 0.75] for d in dims}),
               "candidates_judged")  # fmt: skip
    jury07 = ScriptedLLM(judge07, tmp_path)
    namer = ScriptedLLM(
        lambda r, i: json.dumps(
            {
                "name": f"customers asking thing {i}",
                "persona": f"a busy parent {i}",
                "policy": f"say what the bank checks first, case {i}",
            }
        ),
        tmp_path,
    )
    monkeypatch.setattr(Stage, "jury", lambda self: {"llm": jury07})
    monkeypatch.setattr(Stage, "llm", lambda self, role="generator": namer)
    c.gaps.min_cluster_size, c.gaps.max_edits = 2, 30
    s7 = Stage("07_gaps", c, tmp_path / "run")
    clustered, summary, m = text_learn.gaps_stage(s7)
    dev = s7.load("dev_replies")
    assert m["student"] == "grpo" and m["dev_messages"] == len(dev) == 32  # dev_per_label 4 × 8 topics
    lost = dev["reply"].str.len() > dev["base_reply"].str.len()
    assert (dev["signature"].str.contains("lost") == lost).all()  # the scripted judge's verdict, both orders
    assert (clustered["signature"] != "").all() and set(clustered["source"]) == {"dev", "low_judge"}
    assert (dev["signature"] != "").sum() + 1 == len(clustered)  # m1's best reply failed nothing
    low = "not_refused low:helpfulness low:policy_compliance low:refusal_quality"
    assert clustered.loc[clustered["source"] == "low_judge", "signature"].tolist() == [low]
    assert len(namer.requests) == m["clusters"] > 0 and m["names_by_llm"] == m["clusters"]
    edits, patch = text_learn.config_patch(s7, clustered, summary)
    kinds = edits.set_index("kind")
    assert kinds.loc["refusals", "value"] == pytest.approx(0.35)  # one best reply answered what it must refuse
    assert {"policy", "persona", "edge_case", "more_rows"} <= set(edits["kind"])
    assert (edits.loc[edits["kind"] == "policy", "value"].str.startswith("say what the bank checks")).all()
    from workbench import gaps

    (tmp_path / "run" / "config.yaml").write_text(Path("configs/banking77-replies.yaml").read_text())
    text = gaps.apply(tmp_path / "run" / "config.yaml", gaps.load_patch(s7.artifacts / "config_patch.yaml"), [])
    (tmp_path / "next.yaml").write_text(text)
    nxt, _ = load_config(tmp_path / "next.yaml")
    assert nxt.diversity.refusal_share == pytest.approx(0.35) and len(nxt.task.policies) > len(c.task.policies)
    assert nxt.diversity.personas and nxt.task.edge_cases and nxt.diversity.edge_case_share == gaps.EDGE_CASE_SHARE


def test_sft_fits_the_longest_answer_and_names_max_length_when_none_fits(cfg, tiny, tmp_path):
    """A reply is longer than a label: left unset, max_length grows to the longest example, so no
    answer is cut; set too short for every example, the error names the field."""
    long = pd.DataFrame({"text": ["message number 1"], "label": ["card arrival " * 90]})
    data = causal.sft_dataset(long, causal.system_prompt(cfg))
    _, tok = causal.load(tiny)
    n = causal.longest(tok, data)
    assert n > 160
    cfg.train.sft = {"max_steps": 1, "per_device_train_batch_size": 1}
    assert causal.fit("sft", tiny, data, cfg, tmp_path / "a")["max_length"] == n
    cfg.train.sft = {"max_steps": 1, "per_device_train_batch_size": 1, "max_length": 8}
    with pytest.raises(ValueError, match=r"none of the 1 examples fits train\.sft\.max_length=8"):
        causal.fit("sft", tiny, data, cfg, tmp_path / "b")
