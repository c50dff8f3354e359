"""The profiler on a tiny model: end-to-end and per-operator measurements that cover what the
model predicts, and the comparison table; the measured machine is cached."""

from __future__ import annotations

import pytest
import torch

from lowbit.perf.profile import profile
from lowbit.workflows.perf import compare


def test_profile_measures_every_predicted_category(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    m = profile(model, batch=2, prompt=16, gen=4, vocab=318)
    assert m.prefill_s > 0 and m.decode_step_s > 0 and m.decode_steps == 3
    for ops in (m.prefill_ops, m.decode_ops):
        assert {"q_proj", "down_proj", "attention", "norm", "lm_head", "embedding"} <= set(ops)
        assert all(v >= 0 for v in ops.values())
    assert m.top_aten and m.top_aten[0]["self_cpu_s"] > 0


def test_compare_sums_predicted_operators_into_measured_categories():
    predicted = [
        {"name": "attention", "kind": "attention", "seconds": 2.0},
        {"name": "rotary", "kind": "elementwise", "seconds": 1.0},
        {"name": "input_norm", "kind": "elementwise", "seconds": 0.5},
        {"name": "post_norm", "kind": "elementwise", "seconds": 0.5},
        {"name": "all_reduce", "kind": "comm", "seconds": 9.0},
        {"name": "q_proj", "kind": "linear", "seconds": 4.0},
    ]
    rows = {
        r["name"]: r for r in compare(predicted, {"attention": 6.0, "norm": 1.0, "q_proj": 2.0})
    }
    assert rows["attention"]["predicted_s"] == 3.0 and rows["attention"]["ratio"] == 2.0
    assert rows["norm"]["predicted_s"] == 1.0 and rows["q_proj"]["ratio"] == 0.5
    assert "all_reduce" not in rows


def test_this_machine_is_measured_once_and_cached(tmp_path, monkeypatch):
    from lowbit.perf import measure

    calls = []
    fake = {
        "name": "this machine (test)",
        "memory_bytes": 1e10,
        "peaks": {"fp32": 1e11},
        "bandwidth": 2e10,
        "bandwidth_kernels": {"read": 2e10},
        "dispatch_s": 1e-5,
        "module_s": 2e-5,
        "bandwidth_curve": [[1e6, 1e10], [1e8, 2e10]],
        "compute_curves": {"fp32": [[1e6, 1e10], [1e9, 1e11]]},
        "device": "cpu",
    }
    monkeypatch.setattr(
        measure, "_measure", lambda device, dtype, probes: calls.append((device, dtype)) or fake
    )
    cpu = torch.device("cpu")
    a = measure.this_machine(tmp_path, device=cpu)
    b = measure.this_machine(tmp_path, device=cpu)
    assert calls == [(cpu, torch.float32)] and a == b
    assert a.peak("fp16") == 1e11 and a.dispatch_s == 1e-5
    assert a.attained_bandwidth(1e7) == pytest.approx(1.5e10)
    measure.this_machine(tmp_path, device=cpu, dtype=torch.bfloat16)  # another dtype: measured
    assert calls[-1] == (cpu, torch.bfloat16)


def test_quick_probes_measure_the_runtime_dtype(tmp_path):
    from lowbit.perf import measure

    hw = measure.this_machine(
        tmp_path, device=torch.device("cpu"), dtype=torch.bfloat16, probes=measure.QUICK_PROBES
    )
    assert hw.extra["dtype"] == "bfloat16" and set(hw.peaks) == {"fp32", "bf16"}
    assert [int(x) for x, _ in hw.bandwidth_curve] == [2 * s * s for s in (256, 512, 1024)]
    assert hw.dispatch_s > 0 and hw.bandwidth > 0


@pytest.mark.parametrize(
    ("dtype", "bits", "compute"),
    [("float32", 32, "fp32"), ("bfloat16", 16, "bf16"), ("float16", 16, "fp16")],
)
def test_dense_models_are_predicted_at_the_runtime_dtype(dtype, bits, compute):
    from lowbit import api
    from lowbit.runtime import RuntimeConfig

    rt = api.runtime(RuntimeConfig("cpu", dtype))
    assert api.executed_precision(rt) == {
        "dense_bits": bits,
        "act_bits": bits,
        "kv_bits": bits,
        "compute": compute,
    }


def test_profile_runs_on_the_runtime_and_predicts_in_its_dtype(tiny_llama, tmp_path, monkeypatch):
    from dataclasses import replace

    from lowbit import api
    from lowbit.perf.estimate import Layout
    from lowbit.perf.hardware import get_hardware
    from lowbit.runtime import RuntimeConfig
    from lowbit.workflows.perf import profile_job

    asked = []

    def datasheet(handle, rt, *, probes=None):  # the device's roofline, not measured here
        asked.append(rt)
        return replace(get_hardware("a100-40gb"), op_overhead={})

    monkeypatch.setattr(api, "this_machine_for", datasheet)
    result = profile_job(
        str(tiny_llama), None, Layout(1, 8, 3), tmp_path / "p.json", RuntimeConfig("cpu", "bf16")
    )
    assert asked[0].dtype is torch.bfloat16 and asked[0].device.type == "cpu"
    assert result["runtime"]["dtype"] == "bfloat16" and result["compute"] == "bf16"
    assert result["bits"] == {"dense_bits": 16, "act_bits": 16, "kv_bits": 16}
    assert result["measured"]["decode_step_s"] > 0
    assert result["end_to_end"]["decode_step"]["predicted_s"] > 0
