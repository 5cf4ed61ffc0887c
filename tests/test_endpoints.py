"""Real providers' ways, each against a local server that behaves like the provider
(support.provider, scripted byte by byte): Azure OpenAI's classic API, OpenRouter's headers,
reasoning models, endpoints that ignore n, proxies, and the protocol's edges. The last test runs
the smoke config's generation stages against `transformers serve`, a real OpenAI-compatible server
nobody here wrote."""

import gzip
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import ROOT, cache_with_models, completion, free_port, http_answer, provider, run_bounded, wait_for_http

from workbench.config import LLMConfig
from workbench.llm import LLM, EndpointError, Request
from workbench.llm import http as wbhttp

KEY = "sk-provider-0123456789abcdef"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("PROV_KEY", KEY)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def llm(url: str, tmp_path, **kw) -> LLM:
    cfg = LLMConfig(provider="openai", model="m", base_url=url, api_key_env="PROV_KEY", max_retries=0, **kw)
    return LLM(cfg, tmp_path / "cache")


def ask(n: int = 1, count: int = 1, **kw) -> list[Request]:
    return [Request.chat(None, f"hello {i}", max_tokens=8, seed=10 * i, n=n, **kw) for i in range(count)]


def ok(rows) -> bool:
    return all(r["error"] is None for rs in rows for r in rs)


# ---------------------------------------------------------------- headers, query, body


def test_azure_openai_classic_api_version_and_api_key_header(tmp_path):
    def azure(req):
        if req["query"].get("api-version") != "2024-06-01" or req["headers"].get("api-key") != KEY:
            return http_answer(
                {"error": {"message": "Access denied due to invalid subscription key"}}, "401 Unauthorized"
            )
        assert "authorization" not in req["headers"]
        return http_answer(completion(req))

    with provider(azure) as (url, seen):
        base = url.replace("/v1", "/openai/deployments/gpt-4o")
        out = llm(base, tmp_path, api_key_header="api-key", query={"api-version": "2024-06-01"}).generate(ask())
        assert ok(out) and seen[-1]["path"] == "/openai/deployments/gpt-4o/chat/completions"
        # the query string of base_url is kept too (it was dropped before)
        out = llm(base + "?api-version=2024-06-01", tmp_path / "b", api_key_header="api-key").generate(ask())
        assert ok(out) and seen[-1]["query"] == {"api-version": "2024-06-01"}


def test_openrouter_headers_and_extra_body_reach_the_server(tmp_path, monkeypatch):
    monkeypatch.setenv("SITE", "https://example.org")
    with provider(lambda req: http_answer(completion(req))) as (url, seen):
        cfg = dict(headers={"HTTP-Referer": "${SITE}", "X-Title": "workbench"},
                   extra_body={"provider": {"order": ["a", "b"]}, "reasoning_effort": "low"})  # fmt: skip
        assert ok(llm(url, tmp_path, **cfg).generate(ask()))
    h, body = seen[-1]["headers"], seen[-1]["body"]
    assert h["http-referer"] == "https://example.org" and h["x-title"] == "workbench"
    assert h["authorization"] == f"Bearer {KEY}"
    assert body["provider"] == {"order": ["a", "b"]} and body["reasoning_effort"] == "low"


def test_header_values_cannot_split_the_request_and_credentials_stay_out_of_urls(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from workbench.config import ConfigError

    with pytest.raises(ValidationError, match="line break"):
        LLMConfig(provider="openai", base_url="http://x/v1", headers={"X-A": "a\r\nX-Injected: 1"})
    monkeypatch.setenv("BAD", "a\r\nX-Injected: 1")
    with pytest.raises(ConfigError, match=r"llm.headers.X-A: the value contains a line break"):
        llm("http://127.0.0.1:1/v1", tmp_path, headers={"X-A": "${BAD}"}).generate(ask())
    with pytest.raises(ConfigError, match=r"llm.headers.X-A: environment variable NOPE is not set"):
        llm("http://127.0.0.1:1/v1", tmp_path, headers={"X-A": "${NOPE}"}).generate(ask())
    with pytest.raises(ValidationError, match="user name or password") as e:
        LLMConfig(provider="openai", base_url="http://user:hunter2@example.org/v1")
    assert "hunter2" not in str(e.value).split("input_value")[0]


# ---------------------------------------------------------------- reasoning models, n


def test_a_reasoning_model_gets_max_completion_tokens_and_no_sampling_fields(tmp_path, caplog):
    def reasoning(req):
        b = req["body"]
        if "max_tokens" in b:
            return http_answer({"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this "
                                          "model. Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
                                          "param": "max_tokens", "code": "unsupported_parameter"}}, "400 Bad Request")  # fmt: skip
        for field in ("temperature", "top_p"):
            if field in b and b[field] != 1:
                return http_answer({"error": {"message": f"Unsupported value: '{field}' does not support {b[field]} with "
                                              "this model. Only the default (1) value is supported."}}, "400 Bad Request")  # fmt: skip
        return http_answer(completion(req))

    with provider(reasoning) as (url, seen), caplog.at_level(logging.WARNING):
        out = llm(url, tmp_path).generate(ask(count=6))
    assert ok(out)
    last = seen[-1]["body"]
    assert last["max_completion_tokens"] == 8 and "max_tokens" not in last
    assert "temperature" not in last and last.get("top_p", 1) == 1  # top_p 1 is the default it accepts
    assert sum("max_completion_tokens instead of max_tokens" in r.message for r in caplog.records) == 1
    assert len(seen) <= 6 * 3  # two lessons, each learnt once (requests already in flight meet it too)


def test_an_endpoint_that_ignores_n_gets_one_request_per_candidate(tmp_path, caplog):
    with provider(lambda req: http_answer(completion(req, texts=[f"seed {req['body']['seed']}"]))) as (url, seen):
        with caplog.at_level(logging.WARNING):
            out = llm(url, tmp_path, max_concurrency=1).generate(ask(n=3, count=4))
    assert ok(out) and [[r["candidate"] for r in rs] for rs in out] == [[0, 1, 2]] * 4
    assert [r["text"] for r in out[1]] == ["seed 10", "seed 11", "seed 12"]  # each candidate its own seed
    assert sum("ignores n" in r.message for r in caplog.records) == 1
    # n=3 only until the first answer was read (one more may have gone out meanwhile), then n=1
    assert sum(s["body"]["n"] == 3 for s in seen) <= 2 and sum(s["body"]["n"] == 1 for s in seen) == 12


# ---------------------------------------------------------------- proxies


def test_http_proxy_and_no_proxy_are_honoured(tmp_path, monkeypatch):
    with provider(lambda req: http_answer(completion(req))) as (proxy_url, via_proxy):
        proxy = proxy_url.removesuffix("/v1")
        monkeypatch.setenv("HTTP_PROXY", proxy)
        out = llm("http://llm.internal.example:8000/v1", tmp_path).generate(ask())
        assert ok(out) and via_proxy[-1]["target"] == "http://llm.internal.example:8000/v1/chat/completions"
        monkeypatch.setenv("NO_PROXY", "llm.internal.example")
        with pytest.raises(EndpointError):  # bypassed: the name does not resolve, so nothing answers
            llm("http://llm.internal.example:8000/v1", tmp_path / "b").generate(ask(count=5))
        assert len(via_proxy) == 1


def test_https_goes_through_a_connect_tunnel(tmp_path, monkeypatch):
    with provider(lambda req: b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n") as (proxy_url, seen):
        monkeypatch.setenv("HTTPS_PROXY", proxy_url.removesuffix("/v1"))
        out = llm("https://api.example.com/v1", tmp_path).generate(ask())
    assert seen[0]["method"] == "CONNECT" and seen[0]["target"] == "api.example.com:443"
    assert "refused CONNECT api.example.com:443 (403)" in out[0][0]["error"]


# ---------------------------------------------------------------- protocol edges


def test_a_redirect_is_an_error_that_names_where_to(tmp_path):
    moved = http_answer(None, "301 Moved Permanently", {"Location": "https://new.example/v1/chat/completions"}, raw=b"")
    with provider(lambda req: moved) as (url, _):
        with pytest.raises(EndpointError, match=r"redirects \(HTTP 301 to https://new.example/v1/chat/completions"):
            llm(url, tmp_path).generate(ask(count=5))


def test_interim_1xx_answers_are_skipped_and_204_does_not_hang(tmp_path):
    early = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    with provider(lambda req: early + http_answer(completion(req))) as (url, _):
        assert ok(llm(url, tmp_path).generate(ask()))
    with provider(lambda req: b"HTTP/1.1 204 No Content\r\n\r\n") as (url, _):
        t0 = time.monotonic()
        out = llm(url, tmp_path / "b", timeout_s=30).generate(ask())
    assert time.monotonic() - t0 < 5 and "not JSON" in out[0][0]["error"]


def test_a_gzip_body_is_read(tmp_path):
    def zipped(req):
        return http_answer(
            None, headers={"Content-Encoding": "gzip"}, raw=gzip.compress(json.dumps(completion(req)).encode())
        )

    with provider(zipped) as (url, _):
        out = llm(url, tmp_path).generate(ask())
    assert ok(out) and out[0][0]["text"] == "answer seed 0"


def test_an_ipv6_host_is_bracketed(tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        with provider(lambda req: http_answer(completion(req)), host="::1") as (url, seen):
            assert ok(llm(url, tmp_path).generate(ask()))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    assert seen[0]["headers"]["host"].startswith("[::1]:")


def test_a_long_stream_lives_while_tokens_flow_and_an_error_in_it_fails_the_row(tmp_path):
    def sse(*objs):
        return [(0.25, f"data: {json.dumps(o)}\n\n".encode()) for o in objs]

    def stream(req):
        head = (0, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        words = [{"choices": [{"index": 0, "delta": {"content": f"w{i} "}}]} for i in range(8)]
        if "broken" in req["body"]["messages"][-1]["content"]:
            return [head, *sse(*words[:3], {"error": {"message": "upstream overloaded"}})]
        end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        return [head, *sse(*words, end), (0, b"data: [DONE]\n\n")]

    with provider(stream) as (url, _):
        # 8 pieces 0.25 s apart: 2 s in all, longer than timeout_s, which is the limit between two pieces
        out = llm(url, tmp_path, stream=True, timeout_s=1.0).generate(ask())
        assert ok(out) and out[0][0]["text"].split() == [f"w{i}" for i in range(8)]
        bad = llm(url, tmp_path, stream=True, timeout_s=1.0).generate([Request.chat(None, "broken", max_tokens=8)])
    assert bad[0][0]["error"] and "upstream overloaded" in bad[0][0]["error"] and bad[0][0]["text"] == ""


def test_odd_answers_fail_their_row_or_are_read_and_never_hang(tmp_path):
    """usage with a string count (this hung the event loop), a tool call as the answer, an answer
    over the size cap, the key echoed back (never cached in clear)."""

    def odd(req):
        text = req["body"]["messages"][-1]["content"]
        if text == "usage":
            return http_answer(completion(req, usage={"completion_tokens": "many", "prompt_tokens": None}))
        if text == "tool":
            ans = completion(req, finish="tool_calls")
            call = [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
            ]
            ans["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": call}
            return http_answer(ans)
        if text == "huge":
            return http_answer(None, raw=b"x" * (wbhttp.MAX_BODY + 10))
        return http_answer(completion(req, texts=[f"your key is {KEY}"]))

    reqs = [Request.chat(None, t, max_tokens=8) for t in ("usage", "tool", "huge", "echo")]
    with provider(odd) as (url, _):
        out = llm(url, tmp_path, timeout_s=20).generate(reqs)
    assert out[0][0]["error"] is None and out[0][0]["completion_tokens"] is None
    assert json.loads(out[1][0]["text"])[0]["function"]["name"] == "get_weather"
    assert "larger than 16 MiB" in out[2][0]["error"]
    assert KEY not in out[3][0]["text"] and "[API_KEY]" in out[3][0]["text"]
    assert KEY.encode() not in (tmp_path / "cache" / "llm.sqlite").read_bytes()


def test_html_pages_from_a_proxy_say_so(tmp_path):
    from workbench.config import ConfigError
    from workbench.llm.endpoint import preflight

    page = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"
    with provider(lambda req: http_answer(None, "502 Bad Gateway", {"Content-Type": "text/html"}, raw=page)) as (
        url,
        _,
    ):
        with pytest.raises(EndpointError, match="HTML page.*proxy"):
            llm(url, tmp_path).generate(ask(count=5))
    # a 200 with a web page: the preflight refuses it, and so does a stage that gets nothing else
    with provider(lambda req: http_answer(None, headers={"Content-Type": "text/html"}, raw=page)) as (url, _):
        with pytest.raises(ConfigError, match="models answered an HTML page"):
            preflight(LLMConfig(provider="openai", model="m", base_url=url, api_key_env="PROV_KEY"))
        with pytest.raises(EndpointError, match="every one of the 5 requests failed .*HTML page"):
            llm(url, tmp_path / "b").generate(ask(count=5))


def test_answers_cut_at_max_tokens_are_counted_and_said(tmp_path, caplog):
    with provider(lambda req: http_answer(completion(req, texts=['{"label": "card_ar'], finish="length"))) as (url, _):
        model = llm(url, tmp_path)
        with caplog.at_level(logging.WARNING):
            out = model.generate(ask(count=3, json=True))
    assert model.stats["truncated"] == 3 and all(rs[0]["parsed"] is None for rs in out)
    assert any("3 answers were cut at max_tokens" in r.message and "raise the stage's max_tokens" in r.message
               for r in caplog.records)  # fmt: skip


def test_another_server_with_the_same_model_name_is_not_answered_from_the_cache(tmp_path):
    # both listen at once: one after the other, B could be given A's freed port, and be A to the cache
    with (
        provider(lambda req: http_answer(completion(req, texts=["from A"]))) as (a, _),
        provider(lambda req: http_answer(completion(req, texts=["from B"]))) as (b, _),
    ):
        assert llm(a, tmp_path).generate(ask())[0][0]["text"] == "from A"
        again = llm(b, tmp_path).generate(ask())[0][0]
    assert again["text"] == "from B" and not again["cached"]


# ---------------------------------------------------------------- a real server nobody here wrote


@pytest.mark.slow
def test_the_smoke_generation_stages_run_against_transformers_serve(tmp_path):
    """`transformers serve` (it ships with transformers) serves the embedded model on 127.0.0.1; the
    smoke config's stages 00-02 run against it, on 1 row per label, one round, two candidates and
    without the critic (it answers one request at a time). It ignores n (it logs so), so 02's candidates go one request
    each. The real model: the server's contract with a real chat model's answers is what is tested."""
    from workbench.llm import local_model_dir

    exe = Path(sys.executable).parent / "transformers"
    if not exe.exists() and not shutil.which("transformers"):
        pytest.fail("transformers serve is missing (pip install 'transformers[serving]')")
    cache = cache_with_models(tmp_path / "cache")
    model = str(local_model_dir("smollm2-135m-instruct", cache))
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", WORKBENCH_CACHE=str(cache), SERVE_KEY="none-needed")
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
                               model], stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    stages = ("00_task", "01_prompts", "02_responses")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/models", server, tmp_path / "serve.log")
        cmd = [sys.executable, "-m", "workbench.cli", "run", str(ROOT / "configs" / "smoke.yaml"),
               "--runs-dir", str(tmp_path / "runs"), "--stages", ",".join(stages),
               "--set", "llm.provider=openai", "--set", f"llm.base_url=http://127.0.0.1:{port}/v1",
               "--set", f"llm.model={model}", "--set", "llm.api_key_env=SERVE_KEY", "--set", "llm.max_concurrency=2",
               "--set", "sampling.rows_per_label=1", "--set", "prompts.critique=false", "--set", "prompts.rounds=1",
               "--set", "responses.candidates=2"]  # fmt: skip
        code, output = run_bounded(cmd, env, tmp_path / "run.log", watch=(tmp_path / "runs", tmp_path / "serve.log"))
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert code == 0, output[-6000:]
    run = next((tmp_path / "runs" / "smoke").glob("[0-9]*-*"))
    prov = json.loads((run / "provenance.json").read_text())
    assert [prov["stages"][s]["status"] for s in stages] == ["done"] * 3
    import pandas as pd

    cands = pd.read_parquet(run / "artifacts" / "candidates.parquet")
    assert cands["error"].isna().all() and cands["candidate"].nunique() > 1  # every candidate answered
    assert (
        "(it ignores n): from now on one request per candidate"
        in (run / "notebooks" / "02_responses.ipynb").read_text()
    )
