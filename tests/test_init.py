"""`workbench init`: drafts for each task type, the repair/default path, and bad input."""

import json

import pytest
from scripted_llm import ScriptedLLM, draft_reply
from support import run_config, sets

from workbench import cli, data, init, tasks
from workbench.config import ConfigError, check_runnable, load_config


def definitions(req, i):  # per-label definition calls (no schema) get a sentence naming the label
    label = req.messages[-1][1].split('"')[1]
    return f"Messages where the customer asks about {label}."


def scripted(tmp_path, drafts):
    replies = iter(drafts)
    return ScriptedLLM(lambda req, i: next(replies) if req.schema else definitions(req, i), tmp_path)


def test_classification_draft_is_valid_commented_and_loads(tmp_path):
    llm = scripted(tmp_path, [draft_reply(labels=[{"name": "urgent", "definition": "x" * 5}])])
    res = init.draft("Classify IT support tickets by urgency", labels="high,low", llm=llm)
    out = init.write(res, tmp_path / "t.yaml")
    cfg, _ = load_config(out)
    assert cfg.task.type == "classification" and cfg.task.label_names() == ["high", "low"]
    assert cfg.task.domain == "IT helpdesk tickets" and cfg.task.name == "ticket_urgency_x"
    assert cfg.task.label("high").definition == "Messages where the customer asks about high."
    assert [p.name for p in cfg.diversity.personas] == ["an office worker", "a developer"]
    text = out.read_text()
    assert text.startswith("# Drafted by `workbench init`")
    assert "# A row (classification): input: str" in text and "domain: from the LLM's draft" in text
    assert "# TASK: what the fine-tuned model must do." in text  # section headers
    assert "0.9 chosen for classification" in text  # the smart default's reason, as a comment
    assert cfg.data.dataset is None  # no dataset under data/ has labels high/low
    with pytest.raises(ConfigError, match="data.dataset is null"):
        check_runnable(cfg)


@pytest.mark.parametrize(
    ("description", "extra", "kind", "check"),
    [
        (
            "Extract the amount, currency and date from payment confirmation emails",
            {"type": "extraction", "fields": [{"name": "amount", "type": "number"}, {"name": "date", "type": "date"}]},
            "extraction",
            lambda c: [f.name for f in c.task.fields] == ["amount", "date"] and c.responses.temperature == 0.1,
        ),
        (
            "Summarize long customer complaint emails for the support team",
            {"type": "summarization"},
            "summarization",
            lambda c: c.responses.temperature == 0.3 and c.evaluate.metrics == ["rouge_l", "judge_win_rate"],
        ),
        (
            "A banking assistant that answers questions in a conversation and calls tools to check balances",
            {
                "type": "dialogue",
                "tools": [
                    {
                        "name": "get_balance",
                        "description": "Look up an account balance",
                        "parameters": {"account": "string"},
                    }
                ],
            },
            "tools",  # dialogue does not run yet: its tools, one call per message
            lambda c: c.task.tools[0].name == "get_balance" and c.responses.temperature == 0.2,
        ),
        (
            "A chat bot that talks with customers about their cards in a conversation",
            {
                "type": "dialogue",
                "labels": [
                    {"name": "card_arrival", "definition": "When will my card arrive"},
                    {"name": "card_lost", "definition": "My card is lost or stolen"},
                ],
            },
            "reply",  # dialogue without tools: replies, half of them to the last turn of a conversation
            lambda c: c.diversity.multi_turn_share == 0.5 and c.task.label_names() == ["card_arrival", "card_lost"],
        ),
        (
            "Tag news articles with all topics that apply, a multi-label task",
            {"type": "classification"},
            "classification",  # multi-label does not run yet: drafted single-label, and said so
            lambda c: not c.task.multi_label and c.evaluate.metrics[:2] == ["accuracy", "macro_f1"],
        ),
    ],
)
def test_each_task_type(tmp_path, description, extra, kind, check):
    labels = "politics,sport" if kind.startswith("classification") else None
    res = init.draft(description, labels=labels, llm=scripted(tmp_path, [draft_reply(**extra)]))
    cfg, _ = load_config(init.write(res, tmp_path / "t.yaml"))
    assert check(cfg)
    text = (tmp_path / "t.yaml").read_text()
    assert f"# A row ({kind})" in text
    if extra["type"] == "dialogue" or "multi-label" in description:
        assert "does not run yet (`workbench run` refuses it)" in text  # the header says what was drafted instead
    # every draft is a type `run` executes: it needs only real rows (data.dataset) to run every stage
    with pytest.raises(ConfigError, match="data.dataset is null"):
        check_runnable(cfg)


def test_a_summarization_draft_with_a_dataset_runs_every_stage(tmp_path):
    """Its policies are the summary's rules; its kinds of source are the dataset's labels."""
    reply = draft_reply(type="summarization", policies=["keep every number"], must_refuse=["anything"])
    res = init.draft("Summarize NLP paper abstracts", dataset="aclsum", llm=scripted(tmp_path, [reply]))
    cfg, _ = load_config(init.write(res, tmp_path / "t.yaml"))
    check_runnable(cfg)
    assert cfg.task.policies == ["keep every number"] and cfg.task.must_refuse == []
    assert data.labels(cfg) == ["paper_abstract"] and "keep every number" in tasks.of(cfg).system_prompt(cfg)
    assert cfg.gaps.name_max_tokens == 96  # by task type: room for the namer's JSON


def test_tools_and_fields_are_read_from_a_structured_dataset(tmp_path):
    """With --dataset, a tools draft lists the dataset's tools and arguments, described by a real
    request and their common values; an extraction draft takes one tool's arguments as fields."""
    llm = scripted(tmp_path, [draft_reply(type="tools", name="voice_tools")] * 3)
    res = init.draft("Call the right tool with its arguments for a voice assistant request", dataset="snips", llm=llm)
    cfg, _ = load_config(init.write(res, tmp_path / "t.yaml"))
    assert cfg.task.type == "tools" and len(cfg.task.tools) == 7
    book = {t.name: t for t in cfg.task.tools}["BookRestaurant"]
    assert "party_size_number" in book.parameters and book.description.startswith('Requests like "')
    assert book.parameters["party_size_number"].description.startswith("e.g. ")
    res = init.draft(
        "Extract the details of restaurant bookings",
        dataset="snips",
        llm=scripted(tmp_path, [draft_reply(type="extraction")] * 3),
    )
    cfg, _ = load_config(init.write(res, tmp_path / "e.yaml"))
    assert cfg.task.type == "extraction" and cfg.data.subset == "GetWeather" and len(cfg.task.fields) == 9
    with pytest.raises(init.InitError, match="a tools task needs its tools"):
        init.draft(
            "Call the right tool for a voice assistant request", llm=scripted(tmp_path, [draft_reply(type="tools")] * 3)
        )


def test_repair_rounds_feed_errors_back_then_succeed(tmp_path):
    llm = scripted(tmp_path, ["Sure! Here is your config.", draft_reply(domain=7), draft_reply()])
    res = init.draft("Classify IT support tickets by urgency", labels="high,low", llm=llm, repair_rounds=2)
    assert res.rounds == 2 and res.unparseable == 1
    drafts = [r for r in llm.requests if r.schema]
    assert len(drafts) == 3
    assert "- name: missing (the reply is not a JSON object)" in drafts[1].messages[-1][1]
    assert drafts[2].messages[-1][1].startswith("These fields of your JSON are invalid:\n- domain: Input should be")
    assert "domain: from the LLM's draft" in res.notes


def test_what_still_fails_is_filled_from_defaults_and_reported(tmp_path):
    llm = scripted(tmp_path, ["no json here"] * 2)
    res = init.draft(
        "Classify online-banking customer messages by intent",
        labels="card_arrival,exchange_rate",
        llm=llm,
        repair_rounds=1,
    )
    assert res.rounds == 1 and res.unparseable == 2
    notes = "\n".join(res.notes)
    assert "name: draft missing (the reply is not a JSON object) → default 'classify_online_banking_customer'" in notes
    assert "personas: draft missing" in notes and "→ default ['a first-time customer'" in notes
    assert res.cfg.data.dataset == "banking77"  # found: its train split has both labels
    assert "# Where each drafted value came from:" in res.text and "→ default" in res.text


def test_a_salvaged_cut_off_reply_and_copies_of_the_example(tmp_path):
    cut = '{"name": "ticket_urgency", "type": "classification", "domain": "retail banking", "style": "short and pla'
    res = init.draft("Classify bank messages by intent", labels="a_b,c_d", llm=scripted(tmp_path, [cut] * 3))
    assert res.cfg.task.domain == "retail banking"  # salvaged from the cut-off reply
    assert any("name: draft copied from the example" in n for n in res.notes)  # the example's name is refused


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"description": ""}, r"task description: got '' \(0 words\)"),
        ({"description": "tickets"}, r"task description: got 'tickets' \(1 word\); expected a sentence"),
        ({"labels": "a,b,a"}, r"--labels: duplicate labels \['a'\] \(positions \{'a': \[1, 3\]\}\)"),
        ({"labels": "a,,b"}, r"--labels: empty label at position \[2\]"),
        ({"labels": "a"}, r"at least two labels"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    args = {"description": "Classify support tickets by urgency", "labels": "high,low", **kwargs}
    llm = scripted(tmp_path, [draft_reply()])
    with pytest.raises(init.InitError, match=message):
        init.draft(args.pop("description"), llm=llm, **args)
    assert llm.requests == []  # refused before any LLM call


def test_seeds_file_with_unknown_labels_names_the_lines(tmp_path):
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("text,label\nmy card is late,high\nwhere is it,medium\nok thanks,low\n")
    with pytest.raises(ConfigError, match=r"seeds.csv: unknown labels at line 3 \('medium'\)"):
        init.draft(
            "Classify support tickets by urgency",
            labels="high,low",
            seeds_file=seeds,
            llm=scripted(tmp_path, [draft_reply()]),
        )


def test_seeds_file_gives_labels_and_near_miss_negatives(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    rows = [
        ("my new card has not arrived", "card_arrival"),
        ("when will my card come", "card_arrival"),
        ("I lost my card", "lost_or_stolen_card"),
        ("what rate do you use for euros", "exchange_rate"),
    ]
    seeds.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    res = init.draft("Classify banking messages by intent", seeds_file=seeds, llm=scripted(tmp_path, [draft_reply()]))
    cfg = res.cfg
    assert cfg.task.label_names() == ["card_arrival", "exchange_rate", "lost_or_stolen_card"]
    assert cfg.data.seeds_file == str(seeds) and cfg.data.dataset == "banking77"
    assert all(len(x.negative) == 1 for x in cfg.task.labels)  # a near miss from another label's seeds
    assert cfg.task.label("card_arrival").negative[0] not in {t for t, lab in rows if lab == "card_arrival"}


def test_no_labels_anywhere_is_an_error(tmp_path):
    with pytest.raises(init.InitError, match="no labels: the LLM's draft gave none that validate"):
        init.draft("Classify support tickets by urgency", llm=scripted(tmp_path, [draft_reply()] * 3))


def test_nothing_is_written_half_way_and_nothing_overwritten(tmp_path, monkeypatch):
    out = tmp_path / "c.yaml"
    monkeypatch.setattr(init, "LLM", lambda cfg, cache: scripted(tmp_path, [draft_reply()] * 3))
    assert cli.main(["init", "Classify support tickets by urgency", "--labels", "high,high", "-o", str(out)]) == 2
    assert not out.exists()
    assert cli.main(["init", "Classify support tickets by urgency", "--labels", "high,low", "-o", str(out)]) == 0
    first = out.read_text()
    assert cli.main(["init", "Classify support tickets by urgency", "--labels", "high,low", "-o", str(out)]) == 2
    assert out.read_text() == first
    assert cli.main(["init", "Classify support tickets by urgency", "--labels", "a,b", "-o", str(out), "--force"]) == 0
    assert "- a\n" in out.read_text() or "name: a\n" in out.read_text()


def test_init_llm_settings_come_from_set(tmp_path):
    with pytest.raises(init.InitError, match=r"--set sampling.rows_per_label: init takes llm.\* settings only"):
        init.draft("Classify support tickets by urgency", labels="a,b", llm_overrides=["sampling.rows_per_label=3"])
    with pytest.raises(init.InitError, match=r"--set llm.provider: Input should be 'local' or 'openai'"):
        init.draft("Classify support tickets by urgency", labels="a,b", llm_overrides=["llm.provider=vllm"])


@pytest.mark.slow
def test_embedded_model_drafts_a_banking_config_that_runs(tmp_path, sim, tiny):
    """The done-means: the embedded model's weak draft is carried by repair and defaults, and the
    written config runs (small sizes, through --set; 00-02, and every stage accepts it). The draft is the embedded model's
    own: how init copes with a weak model's answers is what is tested. The run goes through the
    session's simulated endpoint with the tiny model, as the smoke run does (support.endpoint_run)."""
    labels = "card_arrival,lost_or_stolen_card,exchange_rate"
    out = tmp_path / "banking.yaml"
    assert (
        cli.main(
            [
                "init",
                "Classify online-banking customer messages by intent",
                "--labels",
                labels,
                "-o",
                str(out),
                "--repair-rounds",
                "1",
                "--set",
                "llm.dtype=float32",  # fast on any CPU, as the smoke config
            ]
        )
        == 0
    )
    cfg, _ = load_config(out)
    assert cfg.task.label_names() == labels.split(",") and cfg.data.dataset == "banking77"
    small = sets(
        "sampling.rows_per_label=3",
        "data.dev_per_label=4",
        "data.test_per_label=10",
        "gaps.min_cluster_size=2",
        "gaps.umap_neighbors=3",
    )
    # the drafted config runs: 00-02 here (generation from the draft's labels and seeds); every stage
    # 00-99 accepts it (check_runnable), and the whole chain on a config of this shape is the smoke run's
    check_runnable(cfg)
    run, _ = run_config(tmp_path, out, sim, tiny, more=[*small, "--stages", "00_task,01_prompts,02_responses"])
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["status"] == "partial" and prov["stages"]["02_responses"]["status"] == "done"
    assert "Field → gate" in (run / "report" / "00_task.html").read_text()


def test_a_reply_draft_has_topics_policies_and_refusals_and_runs_every_stage(tmp_path):
    extra = {"type": "classification", "policies": ["never promise a refund"],
             "must_refuse": ["access to someone else's account"]}  # fmt: skip
    res = init.draft("Reply to online-banking customers within the bank's policies",
                     labels="card_arrival,pin_blocked", llm=scripted(tmp_path, [draft_reply(**extra)]))  # fmt: skip
    cfg, _ = load_config(init.write(res, tmp_path / "r.yaml"))
    assert cfg.task.type == "reply"  # the description's verb, over the draft's type
    assert cfg.task.label_names() == ["card_arrival", "pin_blocked"] and cfg.data.dataset == "banking77"
    assert cfg.task.policies == ["never promise a refund"] and cfg.task.must_refuse == extra["must_refuse"]
    assert cfg.diversity.refusal_share == init.REFUSAL_SHARE
    assert "# A row (reply)" in (tmp_path / "r.yaml").read_text()
    check_runnable(cfg)  # every stage, 00 to 99
    bare = init.draft("Reply to customers' questions about their parcels", labels="late,lost",
                      llm=scripted(tmp_path, [draft_reply(type="reply")] * 3))  # fmt: skip
    assert bare.cfg.task.must_refuse == [] and bare.cfg.diversity.refusal_share == 0.0
    assert any(n.startswith("must_refuse: draft missing") for n in bare.notes)


def test_a_dataset_given_without_labels_gives_every_label_of_its_train_split(tmp_path):
    """A user's own folder (text and intent columns): its labels are the task's, not the LLM's guess."""
    folder = tmp_path / "mine"
    folder.mkdir()
    rows = "text,intent\n" + "".join(f"please {w} my trip number {i},{w}_trip\n" for w in ("book", "move", "drop")
                                     for i in range(6))  # fmt: skip
    (folder / "train.csv").write_text(rows)
    (folder / "test.csv").write_text(rows)
    llm = scripted(tmp_path, [draft_reply(labels=[{"name": "urgent", "definition": "x" * 5}])])
    res = init.draft("Sort the requests people send to a travel assistant into intents", dataset=str(folder), llm=llm)
    assert res.cfg.task.label_names() == ["book_trip", "drop_trip", "move_trip"]
    assert "task.labels: 3 labels from --dataset's train split" in res.notes
    cfg, _ = load_config(init.write(res, tmp_path / "t.yaml"))
    assert cfg.task.label_names() == ["book_trip", "drop_trip", "move_trip"] and cfg.data.dataset == str(folder)
