"""Structured tasks: the SNIPS benchmark read as tools and arguments, the user's JSONL format and
its errors, answers checked and scored slot by slot, and schema-constrained decoding through the
embedded runner (its answers always parse)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench import structured as st
from workbench.config import ConfigError, LLMConfig
from workbench.files import cache_dir
from workbench.llm.types import Request

SNIPS = Path(__file__).resolve().parent.parent / "data" / "snips"


@pytest.fixture(scope="module")
def snips_test():
    return st.read_split(SNIPS, "test")


def test_snips_reads_as_tools_with_arguments(snips_test):
    train = st.read_split(SNIPS, "train")
    assert len(train) == 13784 and len(snips_test) == 700
    assert snips_test["tool"].value_counts().to_dict() == dict.fromkeys(st.tool_arguments(snips_test), 100)
    row = snips_test.iloc[0]
    assert row.text == "I'd like to have this track onto my Classical Relaxations playlist."
    assert row.arguments == {"music_item": "track", "playlist_owner": "my", "playlist": "Classical Relaxations"}
    # every slot value is a span of its message
    assert not any(st.missing_values(t, a) for t, a in zip(train["text"], train["arguments"]))
    # the "Latin-1" file is UTF-8 with an emoji written as two surrogates (CESU-8): recovered, not mojibake
    play = train[train["tool"] == "PlayMusic"]["text"]
    assert play.str.contains("Pop Punk Perfection \U0001f355").any()
    assert play.str.contains("raíces").any() and not play.str.contains("Ã").any()
    assert "party_size_number" in st.tool_arguments(snips_test)["BookRestaurant"]


@pytest.mark.parametrize(
    "line, error",
    [
        ("{not json", "not JSON"),
        ('["a list"]', "expected an object"),
        ('{"text": "", "tool": "x", "arguments": {}}', "text must be a non-empty string"),
        ('{"text": "book a table"}', "expected keys text and arguments"),
        ('{"text": "book", "tool": 3, "arguments": {}}', "tool must be a tool's name"),
        ('{"text": "book", "tool": "Book", "arguments": ["city"]}', "arguments must be an object"),
        ('{"text": "book", "tool": "Book", "arguments": {"city": ["Paris"]}}', "argument 'city' must be a string"),
        ('{"text": "book", "fields": {"city": "Paris"}, "tool": "Book"}', "not both"),
        ('{"text": "hello", "tool": null, "arguments": {"city": "Paris"}}', "has no arguments"),
    ],
)
def test_a_malformed_row_is_named_by_file_and_line(tmp_path, line, error):
    good = '{"text": "book a table in Paris", "tool": "BookRestaurant", "arguments": {"city": "Paris"}}'
    path = tmp_path / "train.jsonl"
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(ConfigError, match=error) as e:
        st.read_jsonl(path)
    assert f"{path}:3:" in str(e.value)


def test_the_users_format_reads_tool_calls_extraction_and_no_tool(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [
        {
            "text": "table for 2 in Paris",
            "tool": "BookRestaurant",
            "arguments": {"city": "Paris", "party_size_number": 2},
        },
        {"text": "what a nice day", "tool": None, "arguments": {}},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    got = st.read_jsonl(path)
    assert list(got["tool"]) == ["BookRestaurant", st.NO_TOOL] and got["arguments"][0]["party_size_number"] == 2
    path.write_text(json.dumps({"text": "Invoice 42 from ACME", "fields": {"vendor": "ACME"}}))
    assert st.read_jsonl(path)["arguments"][0] == {"vendor": "ACME"}
    with pytest.raises(ConfigError, match="no test.jsonl and no SNIPS files"):
        st.read_split(tmp_path, "test")


TOOLS = {"BookRestaurant": {"city": "string", "party_size_number": "string"}, "GetWeather": {"city": "string"}}


def test_answers_parse_against_the_tools_and_are_scored_slot_by_slot():
    ok, why = st.parse_answer('{"tool": "GetWeather", "arguments": {"city": "Paris"}}', TOOLS)
    assert why is None and ok == {"tool": "GetWeather", "arguments": {"city": "Paris"}}
    assert st.parse_answer('{"tool": "Fly", "arguments": {}}', TOOLS)[1] == "unknown tool 'Fly'"
    assert (
        "unknown arguments ['party_size_number']"
        in st.parse_answer('{"tool": "GetWeather", "arguments": {"party_size_number": "2"}}', TOOLS)[1]
    )
    assert st.parse_answer("Sure! It is sunny.", TOOLS) == (None, "not JSON")
    assert st.parse_answer('{"city": "Oslo"}', {"GetWeather": {"city": "string"}}, with_tool=False)[0] == {
        "tool": "GetWeather",
        "arguments": {"city": "Oslo"},
    }
    gold = [
        {"tool": "BookRestaurant", "arguments": {"city": "Paris", "party_size_number": "2"}},
        {"tool": "GetWeather", "arguments": {"city": "Oslo"}},
        {"tool": "GetWeather", "arguments": {"city": "Rome"}},
    ]
    pred = [
        {"tool": "BookRestaurant", "arguments": {"city": "paris.", "party_size_number": "2"}},  # exact, normalised
        {"tool": "GetWeather", "arguments": {"city": "Bergen"}},  # a wrong value: one fp and one fn
        None,  # did not parse: its slot is missed
    ]
    assert [st.row_counts(g, p) for g, p in zip(gold, pred)] == [(2, 0, 0), (0, 1, 1), (0, 0, 1)]
    s = st.scores(gold, pred, bootstrap=200)
    assert s["slot_precision"] == pytest.approx(2 / 3) and s["slot_recall"] == pytest.approx(2 / 4)
    assert s["slot_f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert s["exact_match"] == pytest.approx(1 / 3) and s["tool_accuracy"] == pytest.approx(2 / 3)
    assert s["parsed"] == pytest.approx(2 / 3) and s["slot_f1_lo"] <= s["slot_f1"] <= s["slot_f1_hi"]
    per = st.per_slot(gold, pred).set_index("slot")
    assert per.loc["city", "support"] == 3 and per.loc["party_size_number", "f1"] == 1.0


def test_a_value_not_in_the_message_is_named():
    assert st.missing_values("Book a table for two in Paris", {"city": "paris", "party_size_number": "2"}) == [
        "party_size_number"
    ]


def test_the_untuned_model_under_the_schema_always_parses(snips_test, tiny):
    """Constrained decoding (llguidance) through the embedded runner, on the tiny random model (the
    grammar is what is tested; its words are noise): greedy answers for 21 real SNIPS test
    messages, with a token budget too small for many of them, so the over-budget rows must close
    their JSON; every answer parses against the seven tools' schema."""
    from workbench.llm.embedded import _LocalModel

    tools = {k: dict.fromkeys(v, "string") for k, v in st.tool_arguments(snips_test).items()}
    schema = json.dumps(st.answer_schema(tools, no_tool=True))
    rows = snips_test.groupby("tool").head(3)
    system = "Call one tool for the user's request, or none. Tools: " + "; ".join(
        f"{k}({', '.join(v)})" for k, v in tools.items()
    )
    reqs = [
        Request.chat(system, t, temperature=0.0, max_tokens=20, seed=i, schema=schema, strict=True)
        for i, t in enumerate(rows["text"])
    ]
    local = _LocalModel(LLMConfig(model=str(tiny), batch_size=24, dtype="float32"), cache_dir())
    got: dict[int, dict] = {}
    local.run(reqs, list(range(len(reqs))), lambda j, r: got.update({j: r[0]}), "test")
    parsed = [st.parse_answer(got[j]["text"], tools) for j in range(len(reqs))]
    assert all(p is not None for p, _ in parsed), [got[j]["text"] for j, (p, _) in enumerate(parsed) if p is None]
    assert any(got[j]["completion_tokens"] > 20 for j in got)  # some ran past the budget to close
    # without the grammar the same model does not give JSON
    free = [Request.chat(system, t, temperature=0.0, max_tokens=20, seed=i) for i, t in enumerate(rows["text"][:4])]
    loose: dict[int, dict] = {}
    local.run(free, [0, 1, 2, 3], lambda j, r: loose.update({j: r[0]}), "test")
    assert any(st.parse_answer(r["text"], tools)[0] is None for r in loose.values())
