"""Mixtures of experts as linears: the routing is the original's, every expert gets
calibration inputs under the default policy (none is left without a Hessian), the routed
counts are exact, and the "routed" policy falls back where an expert got too few tokens."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import GPTQConfig, HessianAccumulator
from lowbit.errors import ConfigError
from lowbit.formats import IntFormat, PerGroup
from lowbit.models.experts import LinearExperts, linearize_experts, routed_counts
from lowbit.models.pipeline import ExpertCalibration, PipelineConfig
from lowbit.models.quantize import quantize_model
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec, uniform_plan
from tests.helpers.families import MOE
from tests.helpers.tiny import make_tiny_model


@pytest.mark.parametrize("name", MOE)
def test_linear_experts_compute_what_the_fused_experts_compute(name, tiny_root):
    from transformers import AutoModelForCausalLM

    path = make_tiny_model(tiny_root, name)
    fused = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    linear = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert linearize_experts(linear)
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = fused(input_ids=ids).logits
        assert torch.allclose(linear(input_ids=ids).logits, ref, atol=1e-5, rtol=1e-5)
        for _, m in linear.named_modules():
            if isinstance(m, LinearExperts):
                m.calibration = ExpertCalibration("all")
        assert torch.allclose(linear(input_ids=ids).logits, ref, atol=1e-5, rtol=1e-5)


def _experts(tiny_root) -> LinearExperts:
    handle = resolve_model(str(make_tiny_model(tiny_root, "qwen3_moe")))
    model = handle.load_model()
    return next(m for _, m in model.named_modules() if isinstance(m, LinearExperts))


def _calibrate(experts: LinearExperts, policy: ExpertCalibration, x, index, weights):
    """Each expert's Hessian input rows, from pre-hooks on its gate_proj."""
    stats = {e: HessianAccumulator(experts.hidden) for e in range(experts.num_experts)}
    rows = dict.fromkeys(stats, 0)

    def hook(e):
        def fn(_, args):
            stats[e].add_batch(args[0])
            rows[e] += args[0].shape[0]

        return fn

    handles = [experts[e].gate_proj.register_forward_pre_hook(hook(e)) for e in stats]
    experts.calibration = policy
    with torch.no_grad():
        out = experts(x, index, weights)
    experts.calibration = None
    for h in handles:
        h.remove()
    return stats, rows, out


def test_an_expert_without_tokens_still_gets_a_finite_hessian(tiny_root):
    experts = _experts(tiny_root)
    t = 24
    x = torch.randn(t, experts.hidden, generator=torch.Generator().manual_seed(0))
    index = torch.tensor([[0, 1]] * (t // 2) + [[1, 2]] * (t // 2))  # experts 3… get nothing
    weights = torch.full((t, 2), 0.5)
    with torch.no_grad():
        routed_out = experts(x, index, weights)
    stats, rows, out = _calibrate(experts, ExpertCalibration(), x, index, weights)
    assert torch.equal(out, routed_out)  # calibration does not change the block's output
    for e, acc in stats.items():
        H = acc.hessian()
        assert torch.isfinite(H).all() and H.diagonal().sum() > 0, e
        assert rows[e] == t  # every token through every expert
    counts = routed_counts(experts, 1)
    assert counts["routed_tokens"][:3] == [t // 2, t, t // 2]
    assert counts["unrouted"] == experts.num_experts - 3 and counts["fell_back"] == 0


def test_the_routed_policy_uses_routed_tokens_and_falls_back_below_the_threshold(tiny_root):
    experts = _experts(tiny_root)
    t = 24
    x = torch.randn(t, experts.hidden, generator=torch.Generator().manual_seed(0))
    index = torch.tensor([[0, 1]] * (t // 2) + [[1, 2]] * (t // 2))
    weights = torch.full((t, 2), 0.5)
    stats, rows, _ = _calibrate(experts, ExpertCalibration("routed", t // 2), x, index, weights)
    assert (rows[0], rows[1], rows[2]) == (t // 2, t, t // 2)  # their routed tokens
    assert all(rows[e] == t for e in range(3, experts.num_experts))  # fell back to all
    assert all(torch.isfinite(s.hessian()).all() for s in stats.values())
    assert routed_counts(experts, 1)["fell_back"] == experts.num_experts - 3


def test_routed_with_an_unreachable_threshold_equals_all(tiny_root):
    """Every expert falls back to every token: the same Hessians, the same codes."""
    handle = resolve_model(str(make_tiny_model(tiny_root, "qwen3_moe")))
    plan = uniform_plan(LayerSpec(IntFormat(4), PerGroup(16), GPTQConfig()))
    ids = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    results = [
        quantize_model(handle, plan, ids, pipeline=PipelineConfig(experts=policy))
        for policy in (ExpertCalibration(), ExpertCalibration("routed", 10**6))
    ]
    for name, qw in results[0].weights.items():
        assert torch.equal(qw.codes, results[1].weights[name].codes), name
    fell = [e["fell_back"] for e in results[1].execution["experts"].values()]
    assert all(f == handle.config.num_experts for f in fell)


def test_bad_policies_are_refused():
    with pytest.raises(ConfigError, match="policy 'some'.*all, routed"):
        ExpertCalibration("some")
    with pytest.raises(ConfigError, match="min_tokens"):
        ExpertCalibration("routed", 0)


def test_sensitivity_hessians_cover_experts_without_tokens(tiny_root):
    """The probes' block Hessians calibrate experts as quantization does: an expert the router
    skips still gets its groups' Hessians."""
    from lowbit.models.capture import capture
    from lowbit.sensitivity.sweep import block_hessians

    handle = resolve_model(str(make_tiny_model(tiny_root, "qwen3_moe")))
    lazy = handle.lazy()
    ids = torch.randint(0, 300, (1, 2), generator=torch.Generator().manual_seed(0))
    acts = capture(lazy, ids, 1, torch.device("cpu")).at_block(0)
    block = lazy.load(0)
    try:
        hessians = block_hessians(block, acts, handle.arch.block(0).sequential_groups, acts.device)
    finally:
        lazy.release(0)
    assert set(hessians) == set(handle.arch.block(0).linear_names)
    assert all(torch.isfinite(H).all() and H.diagonal().sum() > 0 for H in hessians.values())


@pytest.mark.parametrize("name", MOE)
def test_experts_read_from_the_checkpoint_equal_transformers_loading(name, tiny_root):
    """Per expert, renamed (Mixtral's w1/w3/w2) or fused and transposed (GPT-OSS): every block
    parameter read lazily equals transformers' own loading."""
    handle = resolve_model(str(make_tiny_model(tiny_root, name)))
    reference = dict(handle.load_model().named_parameters())
    lazy = handle.lazy()
    for i in range(len(lazy)):
        block = lazy.load(i)
        for key, value in block.named_parameters():
            full = f"{handle.arch.blocks_path}.{i}.{key}"
            assert torch.equal(value, reference[full]), full
        lazy.release(i)
