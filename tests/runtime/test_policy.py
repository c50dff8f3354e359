"""The device and dtype policy: typed, validated, and refused with a clear error where this
machine cannot honour it."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.runtime import Offload, RuntimeConfig, resolve_runtime
from lowbit.runtime.policy import Runtime


def test_auto_is_the_cpu_in_float32_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto picks it")
    rt = resolve_runtime(RuntimeConfig())
    assert rt.device == torch.device("cpu") and rt.dtype is torch.float32
    assert rt.memory > 0 and rt.memory_source
    assert rt.describe()["dtype"] == "float32"


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("bf16", torch.bfloat16), ("float16", torch.float16), ("fp32", torch.float32)],
)
def test_dtype_names_and_aliases(name, dtype):
    assert resolve_runtime(RuntimeConfig("cpu", name)).dtype is dtype


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (dict(device="tpu"), "unknown device 'tpu'"),
        (dict(device="cuda:x"), "unknown device"),
        (dict(device="cpu:1"), "unknown device"),
        (dict(dtype="float8"), "unknown dtype 'float8'"),
        (dict(offload="disk"), "unknown offload"),
        (dict(max_memory=0), "--max-memory must be positive"),
    ],
)
def test_malformed_requests_are_refused_before_any_torch_work(cfg, message):
    with pytest.raises(ConfigError, match=message):
        RuntimeConfig(**cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused(device):
    with pytest.raises(ConfigError, match="no CUDA device.*--device cpu"):
        resolve_runtime(RuntimeConfig(device=device))


def test_max_memory_lowers_the_budget_and_says_so():
    rt = resolve_runtime(RuntimeConfig("cpu", max_memory=123_456_789))
    assert rt.memory == 123_456_789 and rt.memory_source == "--max-memory"


def test_activations_stay_on_the_device_when_they_fit(monkeypatch):
    from lowbit.runtime import policy

    monkeypatch.setattr(policy, "_free_memory", lambda device: (1000, "test"))
    cpu = torch.device("cpu")
    meta = torch.device("meta")  # stands for a GPU: a device other than the CPU
    gpu = Runtime(meta, torch.bfloat16, Offload.AUTO, 1000, "test")
    assert gpu.activations_device(400, 500) == meta
    assert gpu.activations_device(600, 500) == cpu
    forced = Runtime(meta, torch.bfloat16, Offload.CPU, 10**9, "test")
    assert forced.activations_device(1, 1) == cpu
    on_cpu = Runtime(cpu, torch.float32, Offload.AUTO, 10, "test")
    assert on_cpu.activations_device(10**9, 10**9) == cpu
