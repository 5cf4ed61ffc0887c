import pytest
from support import free_port, simserver, stats

from workbench.config import ConfigError, LLMConfig
from workbench.llm import LLM, Request, cache_key, parse_json


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test")


def echo_server(**opts):
    """The simulated endpoint answering scripted rows (benchmarks/simserver.py, `replies: echo`)."""
    return simserver(**{"replies": "echo", "latency": 0.0, **opts})


def attempts(url: str) -> dict[str, int]:
    return stats(url, attempts=True)["attempts"]


def openai_llm(url: str, tmp_path, **kw) -> LLM:
    cfg = LLMConfig(
        provider="openai",
        model="fake",
        base_url=url,
        api_key_env="TEST_KEY",
        max_concurrency=kw.pop("max_concurrency", 4),
        max_retries=kw.pop("max_retries", 3),
        **kw,
    )
    return LLM(cfg, tmp_path / "cache")


def req(text: str, **kw) -> Request:
    return Request.chat(None, text, **{"temperature": 0.0, "max_tokens": 16, "json": True, **kw})


def test_parse_json():
    assert parse_json('{"a": 1}') == {"a": 1}
    assert parse_json('Sure! ```json\n{"score": 4, "why": "ok"}\n``` done') == {"score": 4, "why": "ok"}
    assert parse_json("{not json") is None
    assert parse_json("[1, 2]") is None
    assert parse_json("") is None


def test_cache_key_covers_everything_that_changes_the_answer():
    base = req("hi")
    keys = {
        cache_key("openai", "m", base),
        cache_key("local", "m", base),
        cache_key("openai", "m2", base),
        cache_key("openai", "m", req("hi", seed=1)),
        cache_key("openai", "m", req("hi", temperature=0.5)),
        cache_key("openai", "m", req("hi", n=2)),
        cache_key("openai", "m", req("hey")),
    }
    assert len(keys) == 7
    assert cache_key("openai", "m", req("hi")) == cache_key("openai", "m", base)


def test_rows_carry_metadata_and_parse_json(tmp_path):
    with echo_server(tokens=5, latency=0.01) as url:
        [[row]] = openai_llm(url, tmp_path).generate([req("hello", seed=7)])
    assert row["parsed"] == {"echo": "hello", "seed": 7, "i": 0}
    assert row["model"] == "fake" and row["seed"] == 7 and row["error"] is None
    assert row["prompt_tokens"] == 1 and row["completion_tokens"] == 5
    assert row["latency_s"] > 0 and row["ttft_s"] is None and row["cached"] is False


def test_malformed_json_is_kept_raw(tmp_path):
    with echo_server() as url:
        [[row]] = openai_llm(url, tmp_path).generate([req("[malformed] please")])
    assert row["text"] == "{not json" and row["parsed"] is None and row["error"] is None


def test_n_candidates_and_streaming_ttft(tmp_path):
    with echo_server() as url:
        [rows] = openai_llm(url, tmp_path, stream=True).generate([req("many", n=3, seed=10)])
    assert [r["candidate"] for r in rows] == [0, 1, 2]
    assert [r["seed"] for r in rows] == [10, 11, 12]
    assert [r["parsed"]["i"] for r in rows] == [0, 1, 2]
    assert all(r["ttft_s"] is not None and r["ttft_s"] <= r["latency_s"] for r in rows)
    assert all(r["finish_reason"] == "stop" for r in rows)


def test_retries_honour_retry_after_and_recover(tmp_path):
    with echo_server(fail_times=2, retry_after=0.2) as url:
        llm = openai_llm(url, tmp_path)
        out = llm.generate([req("[429] a"), req("[500] b"), req("plain")])
        assert [r[0]["error"] for r in out] == [None, None, None]
        assert attempts(url) == {"[429] a": 3, "[500] b": 3, "plain": 1}
        assert llm.stats["retries"] == 4


def test_gives_up_after_max_retries_and_does_not_cache_failures(tmp_path):
    with echo_server(fail_times=10) as url:
        llm = openai_llm(url, tmp_path, max_retries=1)
        [[row]] = llm.generate([req("[500] x")])
        assert "gave up after 2 attempts" in row["error"] and row["text"] == ""
        assert len(llm.cache) == 0


def test_client_errors_are_not_retried(tmp_path):
    """A refused key is not retried: it would be refused for every row, so the call stops at once
    with the config field to fix (tests/test_bad_input.py has the whole matrix)."""
    from workbench.llm import EndpointError

    with echo_server() as url:
        with pytest.raises(EndpointError, match=r"llm.api_key_env: .* refused the key in \$TEST_KEY \(HTTP 401"):
            openai_llm(url, tmp_path).generate([req("[401] x")])
        assert attempts(url) == {"[401] x": 1}


def test_concurrency_is_bounded(tmp_path):
    with echo_server(latency=0.05) as url:
        openai_llm(url, tmp_path, max_concurrency=3).generate([req(f"r{i}") for i in range(20)])
        s = stats(url)
        assert 0 < s["peak_in_flight"] <= 3 and s["chat_requests"] == 20


def test_cache_hit_and_resume(tmp_path):
    """A re-run is answered from the cache; after a partial failure only the failed calls are repeated."""
    reqs = [req(f"ok {i}") for i in range(5)] + [req("[500] flaky")]
    port = free_port()  # the same endpoint, restarted: the cache keys it by its URL
    with echo_server(fail_times=10, port=port) as url:
        first = openai_llm(url, tmp_path, max_retries=0).generate(reqs)
        assert stats(url)["chat_requests"] == 6 and first[-1][0]["error"]
    with echo_server(fail_times=0, port=port) as url:  # the endpoint recovers; an interrupted run is started again
        second = openai_llm(url, tmp_path).generate(reqs)
        assert stats(url)["chat_requests"] == 1  # only the failed call went out again
        assert [r[0]["cached"] for r in second] == [True] * 5 + [False]
        assert [r[0]["text"] for r in second[:5]] == [r[0]["text"] for r in first[:5]]
        assert second[-1][0]["error"] is None


def test_missing_api_key_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_KEY")
    with echo_server() as url:
        with pytest.raises(ConfigError, match="environment variable TEST_KEY"):
            openai_llm(url, tmp_path).generate([req("x")])


def test_key_is_not_in_the_cache(tmp_path):
    with echo_server() as url:
        openai_llm(url, tmp_path).generate([req("x")])
    files = list((tmp_path / "cache").glob("llm.sqlite*"))  # the database and its WAL
    assert files and all(b"sk-test" not in f.read_bytes() for f in files)


def local_rows(tiny, reqs: list[Request], batch_size: int) -> list[list[dict]]:
    """Run the tiny model through the embedded runner directly, bypassing the call cache: the
    batching, seeding and first-token machinery is what these tests check, not a model's words."""
    from workbench.files import cache_dir
    from workbench.llm.embedded import _LocalModel

    out: dict[int, list[dict]] = {}
    _LocalModel(LLMConfig(model=str(tiny), batch_size=batch_size, dtype="float32"), cache_dir()).run(
        reqs, list(range(len(reqs))), out.__setitem__, "t"
    )
    return [out[i] for i in range(len(reqs))]


def test_local_model_is_seeded_and_batch_independent(tiny):
    """Same request and seed → same text, alone or batched with a longer prompt; other seeds differ."""
    fruit = [
        Request.chat(None, "Name a fruit and describe it.", temperature=1.0, top_p=0.95, max_tokens=8, seed=s)
        for s in range(5)
    ]
    alone = local_rows(tiny, fruit[:1], batch_size=4)
    batched = local_rows(
        tiny,
        [Request.chat(None, "Write a long story about the sea, ships and sailors.", max_tokens=8, seed=1), fruit[0]],
        batch_size=4,
    )
    assert alone[0][0]["text"] == batched[1][0]["text"]
    assert 0 < alone[0][0]["completion_tokens"] <= 8
    assert alone[0][0]["latency_s"] >= alone[0][0]["ttft_s"] > 0
    texts = {rows[0]["text"] for rows in local_rows(tiny, fruit, batch_size=8)}
    assert len(texts) >= 2


def test_local_first_token_is_constrained_and_its_probabilities_kept(tiny):
    """With `first_tokens` the local model's reply starts with one of them (so a rating or a
    choice always parses), and the probability of each is returned; without it nothing changes."""
    digits = ("1", "2", "3", "4", "5")
    reqs = [
        Request.chat(None, "Write a poem about the sea.", max_tokens=3, seed=s, temperature=1.0, first_tokens=digits)
        for s in range(4)
    ] + [Request.chat(None, "Write a poem about the sea.", max_tokens=3, seed=0, temperature=1.0)]
    rows = [r[0] for r in local_rows(tiny, reqs, batch_size=8)]
    for r in rows[:4]:
        assert r["text"][0] in digits and set(r["first_probs"]) == set(digits)
        assert sum(r["first_probs"].values()) == pytest.approx(1.0, abs=1e-3)
    assert rows[4]["first_probs"] is None and rows[4]["text"][:1] not in digits


def test_local_n_candidates_read_the_prompt_once_and_match_single_requests(tiny):
    """n candidates share one prefill; candidate i is what a single request with seed + i gives."""
    kw = dict(temperature=1.0, top_p=0.95, max_tokens=6)
    together = local_rows(tiny, [Request.chat(None, "Name a colour.", seed=7, n=3, **kw)], batch_size=8)[0]
    alone = [
        local_rows(tiny, [Request.chat(None, "Name a colour.", seed=7 + i, **kw)], batch_size=8)[0][0] for i in range(3)
    ]
    assert [r["text"] for r in together] == [r["text"] for r in alone]
    assert [r["seed"] for r in together] == [7, 8, 9]


def test_error_rows_never_carry_the_key(monkeypatch):
    """An endpoint that echoes the key back in an error gets it into no row (both runners use this)."""
    from workbench.llm import endpoint as llm

    key = "sk-live-0123456789abcdef"
    monkeypatch.setenv("WB_ROW_KEY", key)
    cfg = LLMConfig(provider="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env="WB_ROW_KEY")
    rows = llm._error_rows(cfg, Request.chat(None, "hi", seed=1, n=2), f"HTTP 400: bad token {key}")
    assert [r["error"] for r in rows] == ["HTTP 400: bad token ***"] * 2


def test_a_placeholder_key_does_not_garble_error_messages(monkeypatch):
    from workbench.llm import endpoint as llm

    monkeypatch.setenv("WB_ROW_KEY", "x")  # a local server that checks no key
    cfg = LLMConfig(provider="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env="WB_ROW_KEY")
    msg = "gave up after 6 attempts: HTTP 400: max_tokens exceeds the context"
    assert llm._error_rows(cfg, Request.chat(None, "hi", seed=1), msg)[0]["error"] == msg
