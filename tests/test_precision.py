"""`auto` precision: bfloat16 only where the machine computes in it natively, for the embedded
model (its cache identity and the weights it loads) and for each trl trainer; int8 only when
asked for, on a CPU with the kernels."""

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


@pytest.fixture(params=[True, False], ids=["int8-kernels", "no-int8-kernels"])
def int8(request, monkeypatch):
    monkeypatch.setattr(precision, "int8_kernels", lambda: request.param)
    return request.param


def test_auto_resolves_by_native_support(native, int8):
    want = "bfloat16" if native else "float32"
    assert precision.resolve("auto") == want  # never int8: its answers differ from the model's own
    assert precision.resolve("float32") == "float32" and precision.resolve("bfloat16") == "bfloat16"
    if int8:
        assert precision.resolve("int8") == "int8"
    else:
        with pytest.raises(ValueError, match="no int8 CPU kernels"):
            precision.resolve("int8")
    assert want in precision.why("auto") and "auto" in precision.why("auto")
    with pytest.raises(ValueError, match="float16"):
        precision.resolve("float16")


def test_int8_on_a_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(precision, "facts", lambda: {"cuda": "GPU", "native_bf16": True})
    assert precision.resolve("auto") == "bfloat16"
    with pytest.raises(ValueError, match="int8.*CPU"):
        precision.resolve("int8")


def test_generation_dtype_and_cache_identity(native, int8, tmp_path):
    """The cache keys the resolved dtype and the decode engine: the same config on another CPU, or
    through another engine, is another model."""
    from workbench.llm.decode import ENGINE

    want = "bfloat16" if native else "float32"
    assert LLMConfig().dtype == "auto"
    assert LLM(LLMConfig(), tmp_path).identity.endswith(f"@{want}+{ENGINE}")
    assert LLM(LLMConfig(dtype="float32"), tmp_path).identity.endswith(f"@float32+{ENGINE}")
    endpoint = LLMConfig(provider="openai", model="m", base_url="http://127.0.0.1:1/v1?api-version=1")
    assert LLM(endpoint, tmp_path).identity == "m@http://127.0.0.1:1/v1"  # the server, not its query


@pytest.mark.parametrize("method", ["sft", "dpo", "grpo"])
def test_trainer_bf16_follows_the_cpu(native, method, tmp_path):
    args = causal.trainer_args(method, TrainConfig(), tmp_path, seed=0)
    assert args.bf16 is native
    # the user's choice wins, either way
    forced = TrainConfig(**{method: {"bf16": not native}})
    assert causal.trainer_args(method, forced, tmp_path, seed=0).bf16 is (not native)


@pytest.mark.parametrize("dtype", ["auto", "int8"])
def test_the_embedded_model_loads_in_the_resolved_dtype(native, dtype):
    """The embedded model loads in the dtype `auto` resolves to, int8 through quantized decoding
    steps. The embedded model itself: how its GGUF-converted weights load is what is tested."""
    import torch

    from workbench.files import cache_dir
    from workbench.llm.embedded import _LocalModel

    model = _LocalModel(LLMConfig(dtype=dtype), cache_dir())
    want = dtype if dtype == "int8" else "bfloat16" if native else "float32"
    assert model.dtype == want and model.decoder.int8 == (want == "int8")
    weights = model.decoder.model.model.embed_tokens.weight.dtype
    assert weights == (torch.bfloat16 if want == "bfloat16" else torch.float32)
    # int8: the decoding steps run through torch's dynamic quantized Linear, prompts through the model's own
    step = type(model.decoder.steps.layers[0].mlp.down_proj).__module__
    assert ("quantized" in step) == (want == "int8"), step
    assert "quantized" not in type(model.decoder.llama.layers[0].mlp.down_proj).__module__
