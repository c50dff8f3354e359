"""CPU fp32 results are the same as before the execution core, bit for bit.

``tests/golden/cpu_fp32.json`` was written by commit c3dc85e (the last one before the block
runner, the device policy and the cached reference) with ``python -m tests.golden.observe``,
and rewritten once, on purpose, when the symmetric integer grid took the extreme scale rule
(issue 18: every symmetric code and scale changed; asymmetric ones did not), and once more when
the Hessian statistics came to be summed in fp64 (issue 17: the sensitivity table's Hessian
proxies moved by at most 3.4e-8 relative; every code, scale and evaluation figure stayed the
same), and once more when the proxies came to be summed independently of the torch thread
count (issue 17, ``thread_invariant_sum``: 12 of the 28 entries' Hessian or Fisher proxies moved
in their last bits, at most 5e-8 relative; nothing else moved); this test runs the same
observation on the current code. Quantization must match exactly
(every packed code, scale and zero point, and the norms AWQ rescaled), and so must every figure
computed from exact quantities (perplexity, top-1 agreement, Δp, sensitivity bits, Hessian and
Fisher proxies). The KL divergence now comes from the reference's cached log-probabilities
(2 bytes a vocabulary entry, :mod:`lowbit.evaluation.refcache`): its mean is compared to 1e-4
relative, per-token statistics and the sensitivity probes to the float32 floor of about 1e-7
nats on this random model, whose divergences are tiny.

Bit for bit holds on one CPU vector instruction set: the file was written where torch's CPU
capability is AVX2 (recorded in it). On another (an AVX-512 machine) the observation runs in
subprocesses with ``ATEN_CPU_CAPABILITY`` set to the recorded one, which makes codes, scales and
sensitivity entries bit-identical again; perplexity and NLL (sums) are then compared to 1e-6
relative and Δp (through ``exp``, whose vectorised kernels still round apart) to 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.golden.observe import observe

GOLDEN = Path(__file__).parent / "golden" / "cpu_fp32.json"


def _f(x: str) -> float:
    return float.fromhex(x)


def _recorded_isa() -> str:
    """The CPU capability torch ran at where the golden file was written (AVX2)."""
    return str(json.loads(GOLDEN.read_text())["cpu_capability"])


def _same_isa() -> bool:
    import torch

    return torch.backends.cpu.get_cpu_capability() == _recorded_isa()


@pytest.fixture(scope="module")
def seen(tiny_llama, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        if _same_isa():
            patch.setenv("LOWBIT_GOLDEN_INPROCESS", "1")
        else:  # each command a subprocess on the recorded instruction set
            patch.delenv("LOWBIT_GOLDEN_INPROCESS", raising=False)
            patch.setenv("ATEN_CPU_CAPABILITY", _recorded_isa().lower())
        return observe(tiny_llama, tmp_path_factory.mktemp("golden"))


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


def test_quantization_is_bit_identical(seen, golden):
    names = [k for k in golden if k.startswith("quantize/")]
    assert names and all(k in seen for k in names)
    for name in names:
        assert seen[name] == golden[name], name


def test_evaluation_figures_are_identical(seen, golden):
    exact = _same_isa()
    for model, before in golden["eval/gptq_w4g48"].items():
        now = seen["eval/gptq_w4g48"][model]
        assert now["top1_agreement"] == before["top1_agreement"], model
        if exact:
            for key in ("perplexity", "nll", "delta_p"):
                assert now[key] == before[key], (model, key)
        else:  # subprocesses on the recorded instruction set: sums and exp round apart
            assert _f(now["perplexity"]) == pytest.approx(_f(before["perplexity"]), rel=1e-6)
            assert _f(now["nll"]) == pytest.approx(_f(before["nll"]), rel=1e-6)
            assert (now["delta_p"] is None) == (before["delta_p"] is None), model
            for key, value in (before["delta_p"] or {}).items():
                assert _f(now["delta_p"][key]) == pytest.approx(_f(value), rel=1e-4), key
        if before["kl"] is None:
            assert now["kl"] is None
            continue
        for key in ("mean", "stderr"):
            assert _f(now["kl"][key]) == pytest.approx(_f(before["kl"][key]), rel=1e-4), key
        for key, value in before["kl"].items():
            assert _f(now["kl"][key]) == pytest.approx(_f(value), abs=1e-6), key


def test_sensitivity_entries_are_identical(seen, golden):
    before, now = golden["sensitivity"], seen["sensitivity"]
    assert [e[:2] for e in now] == [e[:2] for e in before]
    for (layer, spec, bits, kl, hessian, fisher), after in zip(before, now, strict=True):
        assert after[2] == bits and after[4] == hessian and after[5] == fisher, (layer, spec)
        assert _f(after[3]) == pytest.approx(_f(kl), rel=1e-3, abs=2e-7), (layer, spec)
