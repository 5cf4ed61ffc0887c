"""Endpoint faults: the openai runner against the simulated server (benchmarks/simserver.py, a real
process on 127.0.0.1) injecting 500s, 429s with Retry-After, resets, hangs, slow and truncated
answers and bodies that are not JSON. Every row completes or is recorded as failed; no answered
request is sent again; no row is duplicated."""

import collections
import time

import pytest
from support import free_port, llm_for, reqs, simserver, stats

from workbench.cache import Cache
from workbench.llm import Request

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
    port = free_port()  # the endpoint comes back at the same address
    with simserver(p500=0.5, p_reset=0.1, latency=0.002, port=port) as url:
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
    with simserver(latency=0.002, port=port) as url:
        llm = llm_for(url, tmp_path, monkeypatch, max_concurrency=32)
        second = llm.generate(requests)
        after = stats(url)
    assert llm.stats["cached"] == 400 - len(failed)
    assert after["requests"] - 1 == len(failed)  # the stats call itself counts
    assert all(rows[0]["error"] is None for rows in second)
    assert [rows[0]["text"] for i, rows in enumerate(second) if i not in failed] == [
        rows[0]["text"] for i, rows in enumerate(first) if i not in failed
    ]


def _runner(url, tmp_path, monkeypatch, **kw):
    from workbench.llm.endpoint import _OpenAIRunner

    llm = llm_for(url, tmp_path, monkeypatch, **kw)
    return _OpenAIRunner(llm.cfg, llm.stats)


def test_concurrency_falls_when_a_self_hosted_server_slows_down_and_rises_when_it_recovers(tmp_path, monkeypatch):
    from workbench.llm.endpoint import _run_async

    # a vLLM-like server: never refuses, every request in flight slows down past its capacity;
    # capacity 64 (more than the client sends), then 8 from 3 s, then 64 again from 7 s
    with simserver(over_limit="slow", concurrency=64, schedule="0:64,3:8,7:64", latency=0.05) as url:
        runner = _runner(url, tmp_path, monkeypatch, max_concurrency=32)
        answered = []
        t_start = time.monotonic()
        _run_async(runner.run(reqs(4000), lambda j, rows: answered.append(j), "aimd"))
    assert sorted(answered) == list(range(4000))
    trace = [(t - t_start, limit, median) for t, limit, median in runner.limits[0].trace]
    before = [x for x in trace if x[0] < 2.8]
    slow = [x for x in trace if 4.5 < x[0] < 6.8]
    after = [x for x in trace if x[0] > 7.2]
    assert before and slow and after, trace
    # no congestion: the ceiling held (one cut at most, for a hiccup of a loaded test machine)
    assert max(limit for _, limit, _ in before) == 32 and min(limit for _, limit, _ in before) >= 22
    # under load it came down from 32 to about twice the server's capacity, where latency is 2x
    assert max(limit for _, limit, _ in slow) <= 20, slow
    assert sorted(m for _, _, m in slow)[len(slow) // 2] < 0.05 * 2.6, slow
    # and climbed back once the server recovered
    assert max(limit for _, limit, _ in after) == 32, after


def test_adaptive_concurrency_off_keeps_the_ceiling(tmp_path, monkeypatch):
    from workbench.llm.endpoint import _run_async

    with simserver(over_limit="slow", concurrency=4, latency=0.02) as url:
        runner = _runner(url, tmp_path, monkeypatch, max_concurrency=16, adaptive_concurrency=False)
        _run_async(runner.run(reqs(300), lambda j, rows: None, "fixed"))
        st = stats(url)
    assert runner.limits[0].limit == 16 and runner.limits[0].trace == []
    assert st["peak_in_flight"] == 16


def _windows_ok(events, per_minute, w):
    """Every window of w seconds holds at most what a limit/61-a-second bucket allows."""
    rate = per_minute / 61
    for i, (t, _) in enumerate(events):
        total = sum(c for u, c in events[i:] if u < t + w)
        assert total <= rate + rate * w + 1e-6, (t, total, rate)


def test_requests_per_minute_are_kept(tmp_path, monkeypatch):
    with simserver(latency=0.002) as url:
        llm = llm_for(url, tmp_path, monkeypatch, max_concurrency=16, rpm=600)
        t0 = time.monotonic()
        llm.generate(reqs(60))
        took = time.monotonic() - t0
        arrivals = stats(url, arrivals=True)["arrivals"]
    events = [(t, 1) for t, _, _ in arrivals]
    assert len(events) == 60
    for w in (0.5, 1, 2, 4):
        _windows_ok(events, 600, w)
    assert took >= (60 - 600 / 61) / (600 / 61) - 0.2  # 60 requests at 9.8 a second, the first 9.8 at once


def test_tokens_per_minute_are_kept(tmp_path, monkeypatch):
    with simserver(latency=0.002) as url:
        llm = llm_for(url, tmp_path, monkeypatch, max_concurrency=16, tpm=30_000)
        llm.generate([Request.chat(None, f"row {i}", max_tokens=50, seed=i) for i in range(40)])
        arrivals = stats(url, arrivals=True)["arrivals"]
    # the server counts max_tokens x n per request, a lower bound of what the client counts
    events = [(t, cost) for t, _, cost in arrivals]
    assert len(events) == 40
    for w in (0.5, 1, 2):
        _windows_ok(events, 30_000, w)
    assert events[-1][0] - events[0][0] > (40 * 50 - 30_000 / 61) / (30_000 / 61) - 0.2
