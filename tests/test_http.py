"""The endpoint client (workbench.llm.http + the runner in workbench.llm.endpoint) against the
simulated server (benchmarks/simserver.py), started as a real process on 127.0.0.1."""

import asyncio
import json
import time

import pytest
from support import llm_for, reqs, simserver, stats

from workbench.cache import Cache
from workbench.llm import Request, cache_key, http


def test_cache_keys_are_stable_across_versions():
    """Changing how the key is computed would silently throw away every user's paid-for cache."""
    # the digests the first implementation (dataclasses.asdict) gave for these requests
    r = Request.chat("sys", "hello", temperature=0.5, max_tokens=32, seed=3, n=2, json=True)
    assert cache_key("openai", "m", r) == "ff272691c2d1a03bb650246f651d35472906e233af66f3d7815a8e8ed903d8a2"
    r = Request.chat(None, "x", first_tokens=("1", "2"), schema="{}")
    assert cache_key("local", "m@bfloat16", r) == "c64126373b091bdc19acd179c3526346187c17484f06f7c11e55cf886d50bf2c"


def test_every_row_is_answered_once_and_concurrency_is_capped(tmp_path, monkeypatch):
    with simserver(concurrency=8, latency=0.02) as url:
        llm = llm_for(url, tmp_path, monkeypatch, max_concurrency=32)
        out = llm.generate(reqs(200))
        st = stats(url)
    assert [r[0]["error"] for r in out] == [None] * 200
    assert [r[0]["seed"] for r in out] == list(range(200))  # in request order
    assert all(r[0]["text"].startswith(f"seed {i} ") for i, r in enumerate(out))
    assert st["answered"] == 200 and st["peak_in_flight"] <= 8
    assert out[0][0]["prompt_tokens"] == 2 and out[0][0]["completion_tokens"] == 8


def test_injected_faults_are_retried_and_no_row_is_lost(tmp_path, monkeypatch):
    with simserver(concurrency=16, p500=0.15, p429=0.15, retry_after=0.05) as url:
        llm = llm_for(url, tmp_path, monkeypatch, max_concurrency=16, max_retries=20)
        out = llm.generate(reqs(300))
        st = stats(url)
    assert all(r[0]["error"] is None for r in out)
    assert st["injected_500"] > 0 and st["injected_429"] > 0
    assert st["answered"] == 300  # each row was answered exactly once
    assert llm.stats["retries"] == st["injected_500"] + st["injected_429"]


def test_over_capacity_429s_are_retried(tmp_path, monkeypatch):
    with simserver(concurrency=4, over_limit="429", retry_after=0.02) as url:
        llm = llm_for(url, tmp_path, monkeypatch, max_concurrency=12, max_retries=50)
        out = llm.generate(reqs(60))
        st = stats(url)
    assert all(r[0]["error"] is None for r in out)
    assert st["refused_429"] > 0 and st["answered"] == 60


def test_a_hanging_request_times_out_and_is_recorded_as_failed(tmp_path, monkeypatch):
    with simserver(p_timeout=1.0, hang=30) as url:
        llm = llm_for(url, tmp_path, monkeypatch, timeout_s=0.4, max_retries=1)
        t0 = time.monotonic()
        [[row]] = llm.generate(reqs(1))
    assert time.monotonic() - t0 < 5
    assert row["error"].startswith("gave up after 2 attempts: timed out after 0.4s")
    assert len(llm.cache) == 0  # failures are never cached: a re-run asks again


def test_streaming_with_per_token_latency_measures_ttft(tmp_path, monkeypatch):
    with simserver(latency=0.05, per_token=0.01, tokens=12) as url:
        llm = llm_for(url, tmp_path, monkeypatch, stream=True)
        [rows] = llm.generate([Request.chat(None, "stream me", max_tokens=12, seed=5, n=2)])
    for i, r in enumerate(rows):
        assert r["error"] is None and r["finish_reason"] == "stop"
        assert r["text"].startswith(f"seed 5 choice {i}:")
        assert 0.04 < r["ttft_s"] < r["latency_s"] and r["latency_s"] > 0.05 + 0.01 * 10
    assert rows[0]["completion_tokens"] == 12


def test_an_error_in_the_row_callback_stops_the_run(tmp_path, monkeypatch):
    def boom(i, rows):
        if i == 3:
            raise ValueError("disk full")

    with simserver() as url:
        llm = llm_for(url, tmp_path, monkeypatch, max_concurrency=4)
        with pytest.raises(ValueError, match="disk full"):
            llm.generate(reqs(50), on_result=boom)


def test_refused_connections_are_retried_then_recorded(tmp_path, monkeypatch):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    llm = llm_for(f"http://127.0.0.1:{port}/v1", tmp_path, monkeypatch, max_retries=1)
    [[row]] = llm.generate(reqs(1))
    assert "gave up after 2 attempts" in row["error"] and "Connect" in row["error"]


def test_pool_reads_chunked_and_reuses_connections():
    async def go(url: str) -> tuple[list[bytes], int]:
        pool = http.Pool(url, {}, timeout_s=5)
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
        out = [await pool.post("/chat/completions", body) for _ in range(5)]
        with pytest.raises(http.HTTPStatus) as e:
            await pool.post("/nowhere", body)
        assert e.value.status == 404 and "no route" in str(e.value)
        opened = pool.opened
        await pool.close()
        return out, opened

    with simserver() as url:
        out, opened = asyncio.run(go(url))
    assert all(json.loads(b)["choices"][0]["finish_reason"] == "stop" for b in out)
    assert opened == 1  # keep-alive: one connection for six requests


def test_cache_batches_are_one_transaction(tmp_path):
    c = Cache(tmp_path / "c.sqlite")
    c.put_many([(f"k{i}", b"v") for i in range(1000)])
    c.put_many([("k1", b"w")])
    assert len(c) == 1000 and c.get_many(["k1", "k2"]) == {"k1": b"w", "k2": b"v"}


def test_replicas_share_the_work_each_within_its_concurrency(tmp_path, monkeypatch):
    with simserver(concurrency=4, latency=0.05) as a, simserver(concurrency=4, latency=0.05) as b:
        llm = llm_for(a, tmp_path, monkeypatch, replicas=[b], max_concurrency=4)
        out = llm.generate(reqs(80))
        sa, sb = stats(a), stats(b)
    assert all(r[0]["error"] is None for r in out)
    assert sa["answered"] + sb["answered"] == 80 and min(sa["answered"], sb["answered"]) >= 20
    # each replica was kept full, and no fuller than its own concurrency
    assert sa["peak_in_flight"] == 4 and sb["peak_in_flight"] == 4


def test_a_bad_replica_url_is_a_config_error(tmp_path, monkeypatch):
    """Refused when the config is read, before anything runs."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"replicas\[0\] 'ftp://nowhere': expected http"):
        llm_for("http://127.0.0.1:1/v1", tmp_path, monkeypatch, replicas=["ftp://nowhere"])


def test_batch_api_submits_resumes_and_resubmits_what_expired(tmp_path, monkeypatch):
    from workbench.llm import BatchPending

    with simserver(batch_seconds=0.5, batch_expire=0.3) as url:
        kw = dict(batch_api=True, batch_poll_s=0.05, max_retries=5)
        # the first run stops waiting before the batch is done; its id is kept
        with pytest.raises(BatchPending, match=r"batch batch_\d+ is in_progress .* run the same command again"):
            llm_for(url, tmp_path, monkeypatch, batch_wait_s=0.1, **kw).generate(reqs(40))
        assert len(list((tmp_path / "cache" / "batches").glob("*.json"))) == 1
        # the re-run collects that batch (no second submission of the same requests), then sends
        # what expired in a new, smaller batch until everything is answered
        llm = llm_for(url, tmp_path, monkeypatch, **kw)
        out = llm.generate(reqs(40))
        st = stats(url)
    assert [r[0]["error"] for r in out] == [None] * 40
    assert [r[0]["seed"] for r in out] == list(range(40))
    assert all(r[0]["text"].startswith(f"seed {i} ") for i, r in enumerate(out))
    assert st["batch_answered"] == 40  # each request was answered once, over the batches
    assert st["batches_created"] >= 2 and st.get("requests", 0) > 0
    assert not list((tmp_path / "cache" / "batches").glob("*.json"))  # collected batches are forgotten
    again = llm_for(url, tmp_path, monkeypatch, **kw).generate(reqs(40))  # the server has stopped
    assert all(r[0]["cached"] for r in again)  # answered from the cache, the endpoint is not needed


def test_batch_lines_that_keep_failing_become_error_rows(tmp_path, monkeypatch):
    with simserver(batch_seconds=0.05, batch_expire=1.0) as url:
        llm = llm_for(url, tmp_path, monkeypatch, batch_api=True, batch_poll_s=0.02, max_retries=1)
        out = llm.generate(reqs(3))
        st = stats(url)
    assert st["batches_created"] == 2
    assert all(r[0]["error"].startswith("batch: not answered after 2 batches: batch line batch_expired") for r in out)
    assert len(llm.cache) == 0
