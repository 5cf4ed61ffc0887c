"""The tools task type (tool calls and extraction) on the task seam: its configs and real rows,
answer-first generation and its gates, 03's verifiable checks (a planted wrong argument is
rejected), the GRPO rewards, the failure signatures, and the MiniLM tagger student on real SNIPS
rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from scripted_llm import ScriptedLLM

from workbench import structured, tagger, tasks
from workbench.config import ConfigError, RunConfig, load_config
from workbench.config.task import ParamSpec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cfg() -> RunConfig:
    return load_config(ROOT / "configs" / "snips-tools.yaml")[0]


def test_the_configs_read_the_snips_rows_through_the_seam(cfg):
    t = tasks.of(cfg)
    assert t is tasks.tools and tasks.of(RunConfig()) is tasks.classification
    assert t.labels(cfg) == sorted(t.labels(cfg)) and len(t.labels(cfg)) == 7
    seeds, test = t.seeds(cfg), t.test(cfg)
    assert seeds.groupby("tool").size().tolist() == [3] * 7 and len(test) == 700
    assert set(t.dev(cfg)["id"]).isdisjoint(seeds["id"])
    t.check_data(cfg)
    ex = load_config(ROOT / "configs" / "snips-extract.yaml")[0]
    assert tasks.of(ex) is tasks.tools and len(tasks.tools.test(ex)) == 100
    assert set(tasks.tools.test(ex)["tool"]) == {"BookRestaurant"}
    schema = tasks.tools.schema(ex)
    assert "tool" not in schema["properties"] and "party_size_number" in schema["properties"]


def test_an_argument_the_config_does_not_declare_is_an_error(cfg):
    tools = [t.model_dump() for t in cfg.task.tools]
    del tools[1]["parameters"]["party_size_number"]
    smaller = cfg.model_copy(
        update={"task": cfg.task.model_copy(update={"tools": [type(cfg.task.tools[0])(**t) for t in tools]})}
    )
    with pytest.raises(ConfigError, match=r"BookRestaurant.*party_size_number"):
        tasks.tools.check_data(smaller)
    with pytest.raises(ValueError, match="type tools needs task.tools"):
        RunConfig(task={"type": "tools", "name": "x"})
    assert ParamSpec.model_validate("integer").type == "integer"


def test_drafts_swap_values_and_the_input_gate_names_what_is_wrong():
    tpl = pd.Series({"text": "Book a table in Paris for 4", "arguments": {"city": "Paris", "party_size_number": "4"}})
    assert tasks.tools.draft(tpl, {"city": "Oslo", "party_size_number": "two"}) == "Book a table in Oslo for two"
    shown = pd.DataFrame({"arguments": [tpl["arguments"]]})
    check = tasks.tools.check_input
    assert check("A table in Oslo for two, please", {"city": "Oslo", "party_size_number": "two"}, shown) is None
    assert check("A table in Oslo please", {"city": "Oslo", "party_size_number": "two"}, shown) == "value_missing"
    assert check("A table in Oslo or Paris", {"city": "Oslo"}, shown) == "value_unintended"
    assert check('Rewrite "Oslo" exactly as written', {"city": "Oslo"}, shown) == "echoes_instructions"
    assert tasks.tools.clean_message("Request: play some jazz") == "play some jazz"
    parse = tasks.tools.parse_suggestions
    assert parse("1. Lisbon\n- New York\n$5.81\nA\nThe city is nice: yes", ["Paris"]) == ["Lisbon", "New York"]
    assert parse("6\nten\n7", ["5", "6"]) == ["6", "7"]


def _scripted(tmp_path, message_for):
    """Suggestions get two values; a message request gets `message_for(draft, round)`."""

    def reply(req, k):
        user = req.messages[-1][1]
        if user.startswith("List "):
            return "Lisbon\nMadrid"
        m = re.search(r"Request: (.*)", user)
        return message_for(m.group(1) if m else None, k)

    return ScriptedLLM(reply, tmp_path)


def test_answer_first_generation_keeps_messages_with_their_values_and_retries_the_rest(cfg, tmp_path):
    small = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"rows_per_label": 2})})
    seeds = tasks.tools.seeds(small)
    calls = {"n": 0}

    def message(draft, k):  # every other message of round 1 drops its values; later rounds copy the draft
        calls["n"] += 1
        if draft is None:
            return "Set a timer for ten minutes."
        return draft if calls["n"] % 2 == 0 or k > 40 else "Could you do the usual thing?"

    rows = tasks.tools.generate_inputs(small, seeds, _scripted(tmp_path, message))
    first = rows[rows["round"] == 0]
    assert len(first) == 14 + round(14 * small.diversity.no_tool_share)
    assert (first["reject_reason"] == "value_missing").any() and first["keep"].any()
    retried = set(rows.loc[rows["round"] == 1, "cell"])
    assert retried == set(first.loc[~first["keep"], "cell"])  # only the failed cells go again
    for r in rows[rows["keep"]].itertuples():
        assert not structured.missing_values(r.text, r.arguments)
        if r.tool != structured.NO_TOOL:
            assert set(r.arguments) == set(seeds.set_index("id").loc[r.template, "arguments"])
    assert (rows.loc[rows["tool"] == structured.NO_TOOL, "arguments"].map(len) == 0).all()


def test_the_critic_keeps_drops_or_rewrites_answer_first_messages_and_a_rewrite_is_checked_again(cfg, tmp_path):
    """With `prompts.critique` the critic reads each message that passed the checks: a drop rejects it
    with the critic's defect (its cell is tried again next round), a rewrite that keeps the values is
    kept, one that loses them is `value_missing`; the critic's words stay on every row."""
    small = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"rows_per_label": 2}),
                                   "diversity": cfg.diversity.model_copy(update={"no_tool_share": 0.0}),
                                   "prompts": cfg.prompts.model_copy(update={"critique": True, "rounds": 2})})  # fmt: skip
    seeds = tasks.tools.seeds(small)
    seen = {"n": 0}
    REWRITES = ("Could you help me out?", "Please do it")  # noqa: N806 (the two rewrites, named once)

    def critic(req, k):
        text = re.search(r'Message to review: "(.*?)"\n', req.messages[-1][1], re.S).group(1)
        seen["n"] += 1
        if text in REWRITES or seen["n"] > 40:  # a rewrite's second critique, or a later round: keep
            return json.dumps({"defects": [], "reason": "fine", "action": "keep"})
        action = ["keep", "drop", "rewrite", "rewrite"][seen["n"] % 4]
        return json.dumps({"defects": [] if action == "keep" else ["vague"], "reason": f"{action}: {text[:20]}",
                           "action": action})  # fmt: skip

    writes = {"n": 0}

    def message(draft, k):
        if draft is None:  # the critic's rewrite request has no "Request:" line
            writes["n"] += 1
            return REWRITES[writes["n"] % 2]
        return draft

    gen = _scripted(tmp_path / "gen", message)
    crit = ScriptedLLM(critic, tmp_path / "critic")
    rows = tasks.tools.generate_inputs(small, seeds, gen, crit)
    first = rows[rows["round"] == 0]
    checked = first[first["critique_action"].notna()]
    assert set(checked["critique_action"]) == {"keep", "drop", "rewrite"}
    dropped = checked[checked["critique_action"] == "drop"]
    assert (~dropped["keep"]).all() and (dropped["reject_reason"] == "vague").all()
    assert set(dropped["cell"]) <= set(rows.loc[rows["round"] == 1, "cell"])  # tried again
    rewritten = checked[checked["rewritten"].astype(bool)]
    assert len(rewritten) and (rewritten["original_text"] != rewritten["text"]).all()
    lost = rewritten[rewritten["arguments"].map(len) > 0]  # the rewrites name none of the values
    assert len(lost) and (lost["reject_reason"] == "value_missing").all()
    for r in rows[rows["keep"]].itertuples():
        assert not structured.missing_values(r.text, r.arguments)


def test_03_rejects_a_planted_wrong_argument_and_pairs_the_worst_candidate(cfg):
    t = tasks.tools
    rows = pd.DataFrame(
        [
            {"id": "a", "text": "play jazz by Miles Davis on Spotify", "tool": "PlayMusic",
             "arguments": {"genre": "jazz", "artist": "Miles Davis", "service": "Spotify"}, "reject_reason": None},
            # planted: a value the message does not contain
            {"id": "b", "text": "play jazz by Miles Davis", "tool": "PlayMusic",
             "arguments": {"genre": "jazz", "artist": "John Coltrane"}, "reject_reason": None},
            # planted: an argument PlayMusic does not have
            {"id": "c", "text": "play jazz in Paris", "tool": "PlayMusic",
             "arguments": {"genre": "jazz", "city": "Paris"}, "reject_reason": None},
        ]
    ).assign(keep=True)  # fmt: skip
    good = '{"tool":"PlayMusic","arguments":{"genre":"jazz","artist":"Miles Davis","service":"Spotify"}}'
    wrong = '{"tool":"PlayMusic","arguments":{"genre":"jazz","artist":"Miles","service":"Spotify"}}'
    intended = {"tool": "PlayMusic", "arguments": rows.loc[0, "arguments"]}
    checks = [t.check_answer(cfg, rows.loc[0, "text"], intended, raw) for raw in (good, wrong, "not json")]
    assert checks[0]["reason"] is None and checks[0]["agreement"] == 1.0
    assert checks[1]["reason"] == "wrong_arguments" and checks[1]["agreement"] < 1.0
    assert checks[2]["reason"] == "schema_invalid"
    wrong_tool = t.check_answer(cfg, rows.loc[0, "text"], intended, '{"tool":"GetWeather","arguments":{}}')
    assert wrong_tool["reason"] == "wrong_tool" and wrong_tool["agreement"] == 0
    cands = pd.DataFrame(
        [{"row": "a", "candidate": i, "raw": raw, **c} for i, (raw, c) in enumerate(zip((good, wrong), checks))]
    )
    judged = t.judge_rows(cfg, rows, cands).set_index("id")
    assert judged.loc["a", "keep"] and judged.loc["a", "rejected_answer"] == wrong
    assert judged.loc["a", "field_agreement"] == {"genre": 1.0, "artist": 0.5, "service": 1.0}
    assert judged.loc["b", "reject_reason"] == "value_missing" and not judged.loc["b", "keep"]
    assert judged.loc["c", "reject_reason"] == "answer_invalid"
    assert json.loads(judged.loc["a", "answer"]) == intended

    # the judge on the answers: one request per (candidate of a kept row, dimension, juror), showing
    # the request, the candidate's answer and a real request of the tool; its score breaks ties
    seeds = pd.DataFrame([{"text": "play some Adele", "tool": "PlayMusic", "arguments": {"artist": "Adele"}}])
    jcfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"jurors": 2})})
    kept = judged.reset_index()
    reqs, keys = t.answer_judge_requests(jcfg, kept, cands, seeds, "{}")
    assert len(reqs) == 2 * 2 * 2  # row a only: 2 candidates × (correctness, tool_usage) × 2 jurors
    assert {(k[1], k[2]) for k in keys} == {(d, j) for d in ("correctness", "tool_usage") for j in (0, 1)}
    user = reqs[0].messages[-1][1]
    assert good in user and 'Request: "play jazz by Miles Davis on Spotify"' in user and "play some Adele" in user
    tie = pd.DataFrame([{"row": "a", "candidate": i, "raw": raw, "agreement": 0.5,
                         "answer": {"tool": "PlayMusic", "arguments": {}}, "judge_score": s}
                        for i, (raw, s) in enumerate([("x", 0.9), ("y", 0.2)])])  # fmt: skip
    ranked = t.judge_rows(cfg, rows, tie).set_index("id")
    assert ranked.loc["a", "best_answer"] == "x" and ranked.loc["a", "rejected_answer"] == "y"
    assert abs(ranked.loc["a", "judge_score"] - 0.55) < 1e-9


def test_grpo_rewards_are_field_f1_and_schema_validity(cfg):
    f1, valid = tasks.tools.rewards(cfg)
    label = '{"tool":"GetWeather","arguments":{"city":"Oslo","timeRange":"tomorrow"}}'
    done = [
        [{"role": "assistant", "content": label}],
        [{"role": "assistant", "content": '{"tool":"GetWeather","arguments":{"city":"Oslo"}}'}],
        [{"role": "assistant", "content": '{"tool":"PlayMusic","arguments":{}}'}],
        [{"role": "assistant", "content": "sunny"}],
        # a made-up tool and argument: graded, so a group of such replies still has a direction
        [{"role": "assistant", "content": '{"tool":"GetWeathr","arguments":{"city":"Oslo","town":"Oslo"}}'}],
    ]
    assert f1(done, [label] * 5) == pytest.approx([1.0, 2 / 3, 0.0, 0.0, 0.5 * 0.5])
    assert valid(done) == pytest.approx([1.0, 1.0, 1.0, 0.0, 0.5 * 18 / 19])


def test_failures_carry_an_error_signature():
    gold = pd.DataFrame(
        {"id": ["1", "2", "3"], "text": ["x", "y", "z"], "tool": ["GetWeather"] * 3,
         "arguments": [{"city": "Oslo"}, {"city": "Oslo", "timeRange": "now"}, {"city": "Oslo"}]}
    )  # fmt: skip
    answers = [
        {"tool": "GetWeather", "arguments": {"city": "Oslo"}},
        {"tool": "GetWeather", "arguments": {"city": "Bergen", "country": "Norway"}},
        {"tool": "PlayMusic", "arguments": {}},
    ]
    got = tasks.tools.failures(gold, answers)
    assert got["signature"].tolist() == ["extra:country missing:timeRange wrong:city", "wrong_tool"]


def test_the_tagger_learns_spans_from_real_rows():
    """The fast student on 20 real train rows per tool, scored on 140 real test rows: it must
    find the tool and a good share of the argument spans (seconds on a CPU)."""
    train = structured.read_split(ROOT / "data" / "snips", "train").sample(frac=1, random_state=0)
    test = structured.read_split(ROOT / "data" / "snips", "test").groupby("tool").head(20)
    tools = structured.tool_arguments(train)
    m = tagger.train_tagger(train.groupby("tool").head(20), tools)
    answers = m.answers(list(test["text"]))
    s = tasks.tools.score(test, answers, bootstrap=0)
    assert s["tool_accuracy"] > 0.8 and s["slot_f1"] > 0.3, s
    for a, text in zip(answers, test["text"]):
        assert not structured.missing_values(text, a["arguments"])  # spans are the message's own words
    assert tagger._value_span("a mystery for my list", "my") == (14, 16)  # whole words first
    assert tagger._value_span("Jazzy", "jazz") == (0, 4) and tagger._value_span("x", "y") is None
    assert tagger._spans(
        "play miles davis now", ["O", "B-artist", "I-artist", "B-timeRange"], [(0, 4), (5, 10), (11, 16), (17, 20)]
    ) == {
        "artist": "miles davis",
        "timeRange": "now",
    }


def test_07_proposes_a_value_list_that_iterate_writes_and_01_draws_from(cfg, tmp_path):
    """A cluster of dev rows that miss `city`: 07 proposes their real cities as known values (not
    those the config has), `gaps.apply` writes them under the tool's argument, and 01's value pool
    starts with them. For extraction the list goes to the field."""
    from workbench import gaps
    from workbench.flows import structured_learn

    g = pd.DataFrame(
        {"signature": ["missing:city", "missing:city wrong:timeRange", "wrong:city", "missing:city"],
         "tool": ["GetWeather"] * 3 + ["BookRestaurant"],  # the last is another tool's: not counted
         "expected": [{"tool": t, "arguments": {"city": c, "timeRange": "now"}}
                      for t, c in zip(["GetWeather"] * 3 + ["BookRestaurant"], ("Oslo", "Bergen", "oslo", "Rome"))]}
    )  # fmt: skip
    edit = structured_learn._value_list_edit(cfg, "GetWeather", g, 3, set())
    assert edit["kind"] == "values" and edit["label"] == "GetWeather.city"
    assert edit["value"] == ["Oslo", "Bergen"]  # each once, as the text had it
    assert edit["path"] == "task.tools.GetWeather.parameters.city.values"
    assert structured_learn._value_list_edit(cfg, "GetWeather", g, 3, {"GetWeather.city"}) is None  # once per argument
    text = gaps.apply(ROOT / "configs" / "snips-tools.yaml", [{**edit, "id": "e1"}], [])
    (tmp_path / "next.yaml").write_text(text)
    nxt = load_config(tmp_path / "next.yaml")[0]
    weather = next(t for t in nxt.task.tools if t.name == "GetWeather")
    assert weather.parameters["city"].values == ["Oslo", "Bergen"]
    assert weather.parameters["city"].description == "the city"  # the rest of the argument kept
    seeds = pd.DataFrame({"arguments": [{"city": "Paris"}]})
    assert tasks.tools.value_pool(nxt, seeds)["city"][:3] == ["Oslo", "Bergen", "Paris"]
    with pytest.raises(ConfigError, match="GetWeather.nope is not an argument"):
        gaps.apply(ROOT / "configs" / "snips-tools.yaml", [{**edit, "id": "e1", "label": "GetWeather.nope"}], [])

    ext = load_config(ROOT / "configs" / "snips-extract.yaml")[0]
    edit = structured_learn._value_list_edit(ext, "BookRestaurant", g.assign(tool="BookRestaurant").iloc[:3], 0, set())
    assert edit["label"] == "city" and edit["path"] == "task.fields.city.values"
    (tmp_path / "ext.yaml").write_text(gaps.apply(ROOT / "configs" / "snips-extract.yaml", [{**edit, "id": "e1"}], []))
    ext2 = load_config(tmp_path / "ext.yaml")[0]
    assert next(f for f in ext2.task.fields if f.name == "city").values == ["Oslo", "Bergen"]
    assert tasks.tools.value_pool(ext2, seeds)["city"][:2] == ["Oslo", "Bergen"]


def test_the_judge_calibration_on_answers_tells_a_knowing_judge_from_a_blind_one(cfg, tmp_path, monkeypatch):
    """03's calibration for tool calls: real dev requests with their own answer (known good) and with
    another tool's answer (known bad); a judge that knows the answers separates them (AUC 1), a
    judge that says 3 to everything does not (AUC 0.5)."""
    from workbench.flows import structured_build
    from workbench.stage import Stage

    t = tasks.of(cfg)
    truth = {r.text: t.answer_json(r.tool, r.arguments) for r in t.dev(cfg).itertuples()}

    def knowing(req, i):
        user = req.messages[-1][1]
        text = user.rsplit('Request: "', 1)[1].split('"\nAnswer: ', 1)
        return json.dumps({"score": 5 if truth.get(text[0]) == text[1].split("\n")[0] else 1, "rationale": "."})

    judges = {"llm": ScriptedLLM(knowing, tmp_path), "blind": ScriptedLLM(lambda r, i: "3 so-so", tmp_path)}
    c = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"calibration_rows": 12})})
    c = c.model_copy(update={"roles": c.roles.model_copy(update={"judge": ["llm", "blind"]})})
    stage = Stage("03_judge", c, tmp_path / "run")
    structured_build.save_rows(stage, t.seeds(c), "seeds")
    monkeypatch.setattr(Stage, "jury", lambda self: judges)
    scored, table = structured_build.calibrate(stage)
    table = table.set_index("judge")
    assert table.loc["llm", "auc"] == 1.0 and table.loc["blind", "auc"] == 0.5
    assert (table["good"] == 12).all() and (table["bad"] == 12).all()
    assert len(scored) == 2 * 24 and len(judges["llm"].requests) == 24 * len(t.answer_rubric(c))


def test_04_exports_tool_calls_and_extractions_as_chat_records_pairs_a_dataset_and_a_card(cfg, tmp_path):
    from datasets import load_from_disk

    from workbench import export

    rows = pd.DataFrame(
        [
            {"id": "a", "text": "play jazz by Miles Davis", "tool": "PlayMusic",
             "arguments": {"genre": "jazz", "artist": "Miles Davis"}, "keep": True, "keep_judge": True},
            {"id": "b", "text": "rate this book 5 stars", "tool": "RateBook",
             "arguments": {"rating_value": "5"}, "keep": True, "keep_judge": True},
            {"id": "c", "text": "play", "tool": "PlayMusic", "arguments": {}, "keep": False, "keep_judge": False},
        ]
    ).assign(reject_stage=[None, None, "judge"], reject_reason=[None, None, "value_missing"])  # fmt: skip
    pairs = pd.DataFrame(
        {"id": ["a", "c"], "chosen": ['{"tool":"PlayMusic"}', "x"], "rejected": ['{"tool":"no"}', "y"]}
    )
    t, kept = tasks.of(cfg), rows[rows["keep"]]
    sft = t.sft_records(cfg, kept)
    dpo = t.dpo_records(cfg, pairs.iloc[:1].assign(text="play jazz by Miles Davis"))  # 04 keeps a's pair only
    assert [r["id"] for r in sft] == ["a", "b"] and [d["id"] for d in dpo] == ["a"]
    system, user, answer = sft[0]["messages"]
    assert (
        "PlayMusic" in system["content"] and "RateBook" in system["content"] and user["content"] == rows.at[0, "text"]
    )
    assert json.loads(answer["content"]) == {
        "tool": "PlayMusic",
        "arguments": {"genre": "jazz", "artist": "Miles Davis"},
    }
    assert (
        dpo[0]["prompt"][1]["content"] == "play jazz by Miles Davis"
        and dpo[0]["rejected"][0]["content"] == '{"tool":"no"}'
    )
    # extraction: the answer is the fields alone
    ex = load_config(ROOT / "configs" / "snips-extract.yaml")[0]
    one = pd.DataFrame(
        [{"id": "e", "text": "a table for 4", "tool": "BookRestaurant", "arguments": {"party_size_number": "4"}}]
    )
    assert json.loads(tasks.of(ex).sft_records(ex, one)[0]["messages"][-1]["content"]) == {"party_size_number": "4"}
    # the writer: arguments differ in shape from row to row, so the datasets folder holds them as JSON text
    paths = export.write_task_exports(cfg, rows, sft, dpo, tmp_path / "export", "task: {}\n", t.ROW_KEY)
    assert [json.loads(x)["id"] for x in paths["sft"].read_text().splitlines()] == ["a", "b"]
    hf = load_from_disk(str(paths["hf"]))
    assert len(hf) == 2 and json.loads(hf[1]["arguments"]) == {"rating_value": "5"}
    card = paths["card"].read_text()
    assert "tools: 2; kept rows per tool: min 1, max 1" in card and "SFT records: 2; DPO pairs: 1" in card
    assert "| judge | value_missing | 1 |" in card and "| after judge | 2 |" in card
