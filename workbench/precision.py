"""Which precision this machine runs models in.

`int8` (asked for, never `auto`'s choice) runs the decoding steps of a local model through torch's
dynamic int8 linear layers on a CPU (`llm.decode`): a step reads a quarter of float32's weight
bytes. Its answers differ from float32's (benchmarks/README.md measures by how much), so the
precision is part of the model's identity in the call cache.

bfloat16 halves the memory traffic of a matmul, but only CPUs with native bf16 instructions
(AVX512-BF16 or AMX) compute in it; elsewhere torch emulates it and a bf16 matmul of the embedded
model's MLP shape takes about 9x as long as float32 (measured on an AVX2-only AMD EPYC: 1.13 s
against 0.13 s). So `auto` (the default of `llm.dtype`) means bfloat16 only where torch reports
native support, float32 everywhere else (where int8 is not chosen); and trl's trainers, which default to bf16 mixed
precision even on a CPU, get `bf16` set the same way unless the config says otherwise.
On a CUDA GPU the choice is torch's `is_bf16_supported()`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path

log = logging.getLogger(__name__)

DTYPES = ("auto", "int8", "bfloat16", "float32")


def _cpuinfo_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def facts() -> dict:
    """What torch reports about this machine: the CPU's vector capability, native bf16, CUDA."""
    import torch  # torch loads in seconds: only where a model runs

    cpu = getattr(torch, "cpu", None)
    try:
        bf16 = bool(cpu._is_avx512_bf16_supported())
        amx = bool(cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without the private probes: read the CPU's flags instead
        flags = _cpuinfo_flags()
        bf16, amx = "avx512_bf16" in flags, "amx_bf16" in flags
    cuda = torch.cuda.is_available()
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": bf16,
        "amx": amx,
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "native_bf16": bool(torch.cuda.is_bf16_supported()) if cuda else (bf16 or amx),
    }


def native_bf16() -> bool:
    return facts()["native_bf16"]


def int8_kernels() -> bool:
    """Whether this torch has a CPU engine for dynamic int8 linear layers (x86 or fbgemm)."""
    import torch  # torch loads in seconds: only where a model runs

    return bool({"x86", "fbgemm", "qnnpack"} & set(torch.backends.quantized.supported_engines))


def resolve(dtype: str) -> str:
    """`auto` → bfloat16 where this machine computes in it natively, else float32; an explicit
    dtype is kept. int8 on a GPU, or with a torch without int8 CPU kernels, is an error."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {DTYPES}")
    if dtype == "int8" and facts()["cuda"]:
        raise ValueError("dtype int8: dynamic int8 quantization runs on a CPU; this machine decodes on a GPU")
    if dtype == "int8" and not int8_kernels():
        raise ValueError("dtype int8: this torch has no int8 CPU kernels (torch.backends.quantized)")
    if dtype != "auto":
        return dtype
    return "bfloat16" if native_bf16() else "float32"


def load_dtype(dtype: str) -> str:
    """The dtype a model's weights load in for the resolved `dtype` (int8 quantizes float32 weights)."""
    return "float32" if dtype == "int8" else dtype


def why(dtype: str) -> str:
    """One line for the log: the dtype a model runs in and why."""
    got = resolve(dtype)
    if dtype != "auto":
        return f"{got} (set in the config)"
    f = facts()
    where = f"GPU {f['cuda']}" if f["cuda"] else f"CPU {f['cpu_capability']}"
    native = "native bfloat16" if f["native_bf16"] else "no native bfloat16"
    return f"{got} (auto: {where}, {native})"


def trainer_bf16(fields: dict) -> bool | None:
    """trl's `bf16` for a trainer whose config fields are `fields`: the user's choice when they
    set bf16 or fp16, else native bf16 on this CPU; None (trl decides) on a GPU."""
    if "bf16" in fields or "fp16" in fields:
        return fields.get("bf16")
    if facts()["cuda"]:
        return None
    return native_bf16()


def cache_arg(model) -> str:
    """The forward() keyword for the KV cache in this transformers: `cache` (5.x; the old name
    `past_key_values` warns on every call and goes in 5.40) or `past_key_values` (earlier)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
