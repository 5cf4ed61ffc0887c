"""The config's model sections: `llm` (the generator's model and every role's default: provider,
endpoint, limits, precision), the named `models` and the `roles` that pick them."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, PrivateAttr, field_validator, model_validator

from workbench.config.task import _Section


def _check_url(url: str | None, field: str) -> str | None:
    if url is None:
        return url
    u = urlsplit(url)
    if u.username or u.password:
        raise ValueError(
            f"{field} carries a user name or password ({u.scheme}://…@{u.hostname}); credentials in a URL end up in "
            "logs and the run's config.yaml: put the key in the variable llm.api_key_env names"
        )
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"{field} {url!r}: expected http(s)://host[:port]/path")
    _check_query(dict(parse_qsl(u.query, keep_blank_values=True)), f"{field}'s query string")
    return url


ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # ${VAR}: read from the environment when a request is sent
# query parameter names that carry a credential (Azure's `api-key`, Google's `key`, signed URLs' `sig`, …)
SECRET_PARAM = re.compile(r"(?i)^(.*[-_])?(key|apikey|token|secret|password|passwd|sig|signature|auth|code)$")


def _check_query(query: dict[str, str], where: str) -> None:
    """A credential in a query string is written into the run's config.yaml and provenance.json:
    refuse a literal value of a parameter named like one (key, api-key, token, sig, …); `${VAR}`
    is read from the environment when a request is sent, and only the reference is written."""
    for name, value in query.items():
        if SECRET_PARAM.match(name) and value and not ENV_REF.fullmatch(value.strip()):
            raise ValueError(
                f"{where}: {name}= holds a literal value, which every file the run writes would keep; write "
                f"{name}=${{MY_VAR}} and export MY_VAR, as llm.headers and llm.api_key_env do"
            )


# the body fields each request carries (llm/wire.py), and where each is set: `extra_body` may not
# replace them (a request to another model with other messages would be recorded and cached as this one)
WORKBENCH_BODY = {
    "model": "llm.model",
    "messages": "the stage's prompt",
    "n": "responses.candidates",
    "stream": "llm.stream",
    "stream_options": "llm.stream",
    "temperature": "each stage's temperature field",
    "top_p": "each stage's top_p field",
    "max_tokens": "each stage's max_tokens field",
    "max_completion_tokens": "each stage's max_tokens field",
    "seed": "the run's seed",
    "response_format": "the answer's JSON schema",
}


class LLMConfig(_Section):
    provider: Literal["local", "openai"] = Field(
        "local", description="local: the embedded SmolLM2-135M-Instruct; openai: any OpenAI-compatible endpoint."
    )
    model: str = Field(
        "smollm2-135m-instruct",
        description="Model name sent to the endpoint; for local, 'smollm2-135m-instruct' or a folder.",
    )
    base_url: str | None = Field(None, description="Endpoint base URL, e.g. http://localhost:8000/v1 (openai only).")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the API key (never the key).",
    )
    replicas: list[str] = Field(
        [],
        description="More base URLs serving the same model (openai): the requests are shared among base_url "
        "and these, max_concurrency in flight on each; the cache does not care which answered.",
    )
    headers: dict[str, str] = Field(
        {},
        description="Extra HTTP headers on every request (openai), e.g. OpenRouter's HTTP-Referer and X-Title; "
        "${VAR} in a value is read from the environment (keep secrets there).",
    )
    query: dict[str, str] = Field(
        {},
        description="Query parameters on every request (openai), e.g. {api-version: 2024-06-01} for Azure OpenAI; "
        "a query string in base_url is kept too. ${VAR} in a value is read from the environment: a key-like "
        "parameter (key, api-key, token, sig, …) must be one, so no file of a run holds the key.",
    )
    extra_body: dict[str, Any] = Field(
        {}, description="Fields added to every request body (openai), e.g. {reasoning_effort: low} or provider routing."
    )
    api_key_header: str = Field(
        "Authorization",
        pattern=r"^[A-Za-z0-9-]+$",
        description="Header that carries the key (openai): Authorization sends 'Bearer <key>'; any other name "
        "(Azure OpenAI's api-key) sends the key as it is.",
    )
    max_concurrency: int = Field(
        16, ge=1, le=4096, description="Requests in flight at once, per endpoint replica (openai)."
    )
    timeout_s: float = Field(
        60.0,
        gt=0,
        description="Per-request timeout in seconds (openai); for a stream, the longest silence between two pieces.",
    )
    max_retries: int = Field(5, ge=0, le=50, description="Retries on 429/5xx/timeouts, honouring Retry-After (openai).")
    adaptive_concurrency: bool = Field(
        True,
        description="Lower the requests in flight when the endpoint's latency rises above latency_tolerance times the "
        "lowest seen (a self-hosted server slowing down under load), and raise them again as it recovers: "
        "additive increase, multiplicative decrease, at most max_concurrency (openai).",
    )
    latency_tolerance: float = Field(
        2.0, gt=1, description="adaptive_concurrency: how many times the lowest latency seen counts as congestion."
    )
    rpm: int | None = Field(
        None, ge=1, description="Requests per minute the endpoint allows (openai); null means no limit is kept."
    )
    tpm: int | None = Field(
        None,
        ge=1,
        description="Tokens per minute the endpoint allows (openai): each request counts its prompt (about 4 "
        "characters a token) plus max_tokens x n, as providers count it; null means no limit is kept.",
    )
    stream: bool = Field(False, description="Stream responses to measure time to first token (openai).")
    batch_api: bool = Field(
        False,
        description="Send the calls through the provider's batch API (/v1/batches; openai): cheaper and slower. "
        "The batch id is kept in the cache folder, so a re-run collects the batch instead of paying again.",
    )
    batch_poll_s: float = Field(30.0, gt=0, description="Seconds between checks of a running batch (batch_api).")
    batch_wait_s: float = Field(
        86400.0,
        gt=0,
        description="How long one run waits for its batch before stopping with a 're-run to collect' error (batch_api).",
    )
    batch_window: Literal["24h"] = Field("24h", description="The batch's completion window (batch_api).")
    batch_size: int = Field(32, ge=1, le=1024, description="Rows per forward pass (local).")
    threads: int | None = Field(None, ge=1, description="Torch CPU threads (local); null means all cores.")
    dtype: Literal["auto", "int8", "bfloat16", "float32"] = Field(
        "auto",
        description="Weights of the local model. auto: bfloat16 where the CPU (or GPU) computes in it natively "
        "(AVX512-BF16 or AMX), else float32 (bf16 is about 9x slower than float32 on an AVX2-only CPU). int8 "
        "(CPU, asked for only): decoding steps through dynamic int8 linear layers, prompts read in float32; "
        "faster, with answers that differ from the model's own (benchmarks/README.md). The choice is logged, kept "
        "in the run's provenance and in the call cache's keys.",
    )
    price_input_per_1m: float | None = Field(None, ge=0, description="Price per million prompt tokens (estimate).")
    price_output_per_1m: float | None = Field(None, ge=0, description="Price per million completion tokens (estimate).")

    _where: str = PrivateAttr("llm")  # where the config names this model: llm, or models.<name>

    @property
    def where(self) -> str:
        """The config's name for this model's section (`llm` or `models.<name>`), for messages."""
        return self._where

    @model_validator(mode="after")
    def _int8_is_local(self):
        if self.dtype == "int8" and self.provider != "local":
            raise ValueError(
                "dtype: int8 quantizes the embedded model (provider: local); an endpoint's server picks its own "
                "precision, so it would be ignored: remove it, or quantize on the server"
            )
        return self

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v):
        return _check_url(v, "base_url")

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, v):
        return [_check_url(u, f"replicas[{i}]") for i, u in enumerate(v)]

    @field_validator("query")
    @classmethod
    def _query(cls, v):
        _check_query(v, "query")
        return v

    @field_validator("extra_body")
    @classmethod
    def _extra_body(cls, v):
        for k in v:
            if k in WORKBENCH_BODY:
                raise ValueError(f"{k!r}: the workbench sets it on every request ({WORKBENCH_BODY[k]}); extra_body adds "
                                 "fields, it does not replace these")  # fmt: skip
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v):
        for k, val in v.items():
            if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", k):
                raise ValueError(f"header name {k!r}: letters, digits and -_. only")
            if any(c in val for c in "\r\n\0"):
                raise ValueError(f"header {k}: the value contains a line break or NUL, which would split the request")
        return v


# Each rubric juror of one model reads its own wording of the judge's prompt (judge.USER, the tools
# judge's JUDGE_USER): at temperature 0 a model's juror past the last wording would repeat an earlier
# juror word for word and inflate the agreement, so the config refuses it.
JUDGE_WORDINGS = 2
_MODEL_NAME = r"^[A-Za-z_][A-Za-z0-9_-]*$"


class RolesConfig(_Section):
    """Which model plays each part. A name is `llm` (the section above) or a key of `models`."""

    generator: str = Field(
        "llm", description="Writes 01's inputs, 02's candidates, 01's and 04's rewrites, 00's previews."
    )
    critic: str = Field("llm", description="01's critic: critiques each generated input and re-critiques rewrites.")
    judge: list[str] = Field(
        ["llm"],
        min_length=1,
        description="03's rubric judges: each model named is a juror (judge.jurors of it, own seed and wording "
        "each); several models make a jury whose agreement is Krippendorff's alpha.",
    )
    refusal_judge: str = Field(
        "llm", description="06's safety check: decides whether each answer to a harmful request refuses it."
    )
    namer: str = Field("llm", description="07's cluster namer: names each failure cluster from its rows.")

    def names(self, role: str) -> list[str]:
        """The models a role names, as a list (one for every role but the judge's jury)."""
        value = getattr(self, role)
        return list(value) if isinstance(value, list) else [value]
