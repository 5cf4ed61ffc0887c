"""One LLM interface for every stage, in one module per part: the request and row types and the
cache key (`types`), the front door that answers from the cache and calls the rest (`front`),
an OpenAI-compatible endpoint (`endpoint`, with its backpressure in `limits` and its HTTP client
in `http`), a provider's batch API (`batch`) and the embedded model (`embedded`). Import from here."""

from workbench.llm.batch import BatchPending
from workbench.llm.embedded import embedded_gguf, local_model_dir
from workbench.llm.endpoint import EndpointError, preflight
from workbench.llm.front import LLM, generate_by, generate_each
from workbench.llm.types import EMBEDDED_MODEL, Request, cache_key, clean_text, parse_json

__all__ = [
    "EMBEDDED_MODEL",
    "LLM",
    "BatchPending",
    "EndpointError",
    "Request",
    "cache_key",
    "clean_text",
    "embedded_gguf",
    "generate_by",
    "generate_each",
    "local_model_dir",
    "parse_json",
    "preflight",
]
