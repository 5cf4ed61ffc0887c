"""Endpoint faults: the openai runner against the simulated server (workbench.simserver, a real
process on 127.0.0.1) injecting 500s, 429s with Retry-After, resets, hangs, slow and truncated
answers and bodies that are not JSON. Every row completes or is recorded as failed; no answered
request is sent again; no row is duplicated."""

import collections

import pytest

from tests.test_http import llm_for, reqs, simserver, stats
from workbench.cache import Cache

FAULTS = {  # 10% of attempts in all
    "p500": 0.02,
    "p429": 0.02,
    "p_reset": 0.015,
    "p_truncated": 0.015,
    "p_nonjson": 0.01,
    "p_slow": 0.01,
    "p_timeout": 0.01,
}


def _generate_counting(llm, requests):
    """generate() with the on_result callback counted per request index (rows streamed to disk
    and live views go through it: a duplicate there is a duplicate row)."""
    calls = collections.Counter()
    out = llm.generate(requests, on_result=lambda i, rows: calls.update([i]))
    return out, calls


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_ten_thousand_requests_with_ten_percent_faults_lose_nothing(tmp_path, monkeypatch, stream):
    n = 10_000 if not stream else 2_000
    opts = dict(FAULTS, latency=0.005, concurrency=64, retry_after=0.05, hang=5, slow=0.3, max_requests=50_000)
    with simserver(**opts) as url:
        llm = llm_for(url, tmp_path, monkeypatch, max_concurrency=64, timeout_s=1.0, max_retries=8, stream=stream)
        requests = reqs(n)
        out, calls = _generate_counting(llm, requests)
        st = stats(url)
    injected = {k: v for k, v in st.items() if k.startswith("injected_")}
    faults = sum(injected.values())
    # every kind of fault happened, about 10% of the attempts
    kinds = {"500", "429", "reset", "truncated", "nonjson", "slow", "timeout"}
    assert {k.removeprefix("injected_") for k in injected} == kinds
    assert 0.07 < faults / (st["requests"] - 1) < 0.13, st
    # every row completed, once, in order
    assert len(out) == n and all(len(rows) == 1 for rows in out)
    assert [r[0]["seed"] for r in out] == list(range(n))
    assert [r[0]["error"] for r in out if r[0]["error"]] == []
    assert all(r[0]["text"].startswith(f"seed {i} choice 0") for i, r in enumerate(out))
    assert sorted(calls) == list(range(n)) and set(calls.values()) == {1}
    # no request sent again once it was answered; the slow ones (0.3 s) were not given up on
    assert st.get("answered_again", 0) == 0, st
    assert st["answered"] == n, st
    # exactly one more attempt per fault that left no answer (a slow answer is an answer)
    assert st["requests"] - 1 == n + faults - injected["injected_slow"], st
    assert len(Cache(tmp_path / "cache" / "llm.sqlite")) == n


def test_rows_that_exhaust_their_retries_are_failed_rows_and_retry_alone(tmp_path, monkeypatch):
    requests = reqs(400)
    with simserver(p500=0.5, p_reset=0.1, latency=0.002) as url:
        llm = llm_for(url, tmp_path, monkeypatch, max_concurrency=32, max_retries=1)
        first = llm.generate(requests)
    failed = [i for i, rows in enumerate(first) if rows[0]["error"]]
    # each failed row is kept, in its place, with the error that ended it
    assert len(first) == 400 and 40 < len(failed) < 250
    for i in failed:
        assert first[i][0]["seed"] == i and first[i][0]["text"] == ""
        assert "gave up after 2 attempts" in first[i][0]["error"]
        assert "HTTP 500" in first[i][0]["error"] or "connection" in first[i][0]["error"]
    # the same call again once the endpoint is well: the answered rows come from the cache and only
    # the failed ones are sent
    with simserver(latency=0.002) as url:
        llm = llm_for(url, tmp_path, monkeypatch, max_concurrency=32)
        second = llm.generate(requests)
        after = stats(url)
    assert llm.stats["cached"] == 400 - len(failed)
    assert after["requests"] - 1 == len(failed)  # the stats call itself counts
    assert all(rows[0]["error"] is None for rows in second)
    assert [rows[0]["text"] for i, rows in enumerate(second) if i not in failed] == [
        rows[0]["text"] for i, rows in enumerate(first) if i not in failed
    ]
