"""`auto` precision: bfloat16 only where the machine computes in it natively, for the embedded
model (its cache identity and the weights it loads) and for each trl trainer."""

from __future__ import annotations

import pytest

from workbench import causal, precision
from workbench.config import LLMConfig, TrainConfig
from workbench.llm import LLM


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-bf16"])
def native(request, monkeypatch):
    facts = {"cpu_capability": "TEST", "avx512_bf16": request.param, "amx": False, "cuda": None}
    monkeypatch.setattr(precision, "facts", lambda: dict(facts, native_bf16=request.param))
    return request.param


def test_auto_resolves_by_native_support(native):
    want = "bfloat16" if native else "float32"
    assert precision.resolve("auto") == want
    assert precision.resolve("float32") == "float32" and precision.resolve("bfloat16") == "bfloat16"
    assert want in precision.why("auto") and "auto" in precision.why("auto")
    with pytest.raises(ValueError, match="float16"):
        precision.resolve("float16")


def test_generation_dtype_and_cache_identity(native, tmp_path):
    """The cache keys the resolved dtype: the same config on another CPU is another model."""
    want = "bfloat16" if native else "float32"
    assert LLMConfig().dtype == "auto"
    assert LLM(LLMConfig(), tmp_path).identity.endswith("@" + want)
    assert LLM(LLMConfig(dtype="float32"), tmp_path).identity.endswith("@float32")
    endpoint = LLMConfig(provider="openai", model="m", base_url="http://127.0.0.1:1/v1?api-version=1")
    assert LLM(endpoint, tmp_path).identity == "m@http://127.0.0.1:1/v1"  # the server, not its query


@pytest.mark.parametrize("method", ["sft", "dpo", "grpo"])
def test_trainer_bf16_follows_the_cpu(native, method, tmp_path):
    args = causal.trainer_args(method, TrainConfig(), tmp_path, seed=0)
    assert args.bf16 is native
    # the user's choice wins, either way
    forced = TrainConfig(**{method: {"bf16": not native}})
    assert causal.trainer_args(method, forced, tmp_path, seed=0).bf16 is (not native)


def test_the_embedded_model_loads_in_the_resolved_dtype(native):
    import torch

    from workbench.files import cache_dir
    from workbench.llm.embedded import _LocalModel

    model = _LocalModel(LLMConfig(), cache_dir())
    assert model.model.dtype == (torch.bfloat16 if native else torch.float32)
    assert model.dtype == ("bfloat16" if native else "float32")
