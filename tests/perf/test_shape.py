"""The performance model's shape against the real models of every supported family: the
linear names it prices are exactly the modules lowbit quantizes (experts one by one), each
with the module's real width and bias; its parameter count is the model's own; MoE FLOPs count
the routed top-k only; MLA caches its latent; a plan's 4-bit experts shrink the bytes."""

from __future__ import annotations

from collections import defaultdict

import pytest

from lowbit.errors import ConfigError
from lowbit.perf.estimate import Layout, estimate, kv_bytes_per_token, memory_per_gpu
from lowbit.perf.hardware import get_hardware
from lowbit.perf.operators import Precision, Step, attention_op, block_ops
from lowbit.perf.precision import precision_for
from lowbit.perf.shape import ModelShape, shape_from_config
from lowbit.plan import Plan, Rule
from tests.export.shared import spec
from tests.helpers.families import FAMILIES, MOE, family_config
from tests.helpers.tiny import config_for

DENSE = Precision({}, 16.0, 16, 16, "fp16")
SUPPORTED = tuple(f for f in FAMILIES if f != "opt") + ("qwen2_moe", "qwen3_moe_dense_first")
W4 = spec(4)  # W4 g32: 4 + 16/32 = 4.5 bits per weight


def _config(family: str):
    import transformers as T

    attn = dict(vocab_size=320, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    if family == "qwen2_moe":  # a shared expert with its sigmoid gate; block 0 dense
        return T.Qwen2MoeConfig(
            intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
            num_experts=4, num_experts_per_tok=2, num_hidden_layers=3, mlp_only_layers=[0],
            **attn,
        )  # fmt: skip
    if family == "qwen3_moe_dense_first":  # dense blocks by mlp_only_layers and the step
        return T.Qwen3MoeConfig(
            intermediate_size=96, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
            num_hidden_layers=4, mlp_only_layers=[0], decoder_sparse_step=2, head_dim=16, **attn,
        )  # fmt: skip
    return config_for(family) if family == "qwen3" else family_config(family)


def _per_block(names: list[str], blocks_path: str) -> dict[int, set[str]]:
    out: dict[int, set[str]] = defaultdict(set)
    for name in names:
        block, rest = name.removeprefix(blocks_path + ".").split(".", 1)
        out[int(block)].add(rest)
    return dict(out)


@pytest.mark.parametrize("family", SUPPORTED)
def test_linear_names_are_the_modules_lowbit_quantizes(family):
    from lowbit.models.discover import architecture_of

    config = _config(family)
    arch = architecture_of(config, "x")
    shape = shape_from_config(config)
    assert shape.blocks_path == arch.blocks_path
    assert _per_block(shape.linear_names(), shape.blocks_path) == _per_block(
        arch.layer_names(), arch.blocks_path
    )
    assert len(shape.linear_names()) == len(arch.layer_names())


@pytest.mark.parametrize("family", SUPPORTED)
def test_linear_widths_biases_and_parameters_are_the_models(family):
    """Every parameter is modelled: linears (all experts, biases), norms, routers and their
    biases, Qwen2-MoE's shared-expert gate, GPT-OSS's attention sinks, embedding, head."""
    from transformers import AutoModelForCausalLM

    from lowbit.models.discover import meta_model

    config = _config(family)
    shape = shape_from_config(config)
    modules = dict(meta_model(config, "x").named_modules())
    for name, lin in shape.named_linears():
        module = modules[name]
        assert tuple(module.weight.shape) == (lin.out_features, lin.in_features), name
        assert (module.bias is not None) == lin.bias, name
    real = AutoModelForCausalLM.from_config(config)
    assert shape.parameters() == sum(p.numel() for p in real.parameters())


def test_moe_flops_count_the_routed_top_k_and_every_shared_expert():
    shape = shape_from_config(family_config("deepseek_v3"))  # h 64, 8 experts of 32, top 2
    rows = 5
    dense = {op.name: op for op in block_ops(0, shape, DENSE, Step(1, rows, rows), 1)}
    sparse = {op.name: op for op in block_ops(1, shape, DENSE, Step(1, rows, rows), 1)}
    assert dense["gate_proj"].flops == 2 * rows * 64 * 96  # first_k_dense_replace = 1
    assert "router" not in dense and "experts.gate_proj" not in dense
    assert sparse["experts.gate_proj"].flops == 2 * rows * 64 * 32 * 2  # top-2 of 8
    assert sparse["experts.down_proj"].flops == 2 * rows * 32 * 64 * 2
    assert sparse["shared_experts.up_proj"].flops == 2 * rows * 64 * 32  # every token
    assert sparse["router"].flops == 2 * rows * 64 * 8
    assert sparse["experts.silu_mul"].flops == 5 * rows * 32 * 2
    assert sparse["shared_experts.silu_mul"].flops == 5 * rows * 32
    assert shape.active_intermediate(0) == 96 and shape.active_intermediate(1) == 32 * 2 + 32


def test_mla_attention_and_its_latent_cache_by_hand():
    shape = shape_from_config(family_config("deepseek_v3"))
    r, rope, nope, v, heads, layers = 32, 8, 8, 16, 4, 3
    assert shape.mla is not None and shape.head_dim == nope + rope
    for tp in (1, 2, 4):  # the latent is one for all heads, replicated on every GPU
        assert kv_bytes_per_token(shape, DENSE, Layout(tp=tp)) == layers * (r + rope) * 2
    kv8 = Precision({}, 16.0, 16, 8, "fp16")
    assert kv_bytes_per_token(shape, kv8, Layout()) == layers * (r + rope) * 1
    layout = Layout(batch=3, prompt=20, gen=12)  # 32 tokens: two pages of 16
    assert memory_per_gpu(shape, DENSE, layout)["kv_cache"] == 3 * 32 * layers * (r + rope) * 2
    b, ctx = 2, 9
    op = attention_op(shape, DENSE, Step(b, 1, ctx), 1)
    assert op.flops == b * heads * ctx * (2 * (r + rope) + 2 * r + 5)  # absorbed form
    assert op.kv_bytes == b * ctx * (r + rope) * 2
    ops = {o.name: o for o in block_ops(1, shape, DENSE, Step(b, 1, ctx), 1)}
    assert ops["kv_write"].kv_bytes == b * (r + rope) * 2
    assert ops["kv_b_proj"].flops == 2 * b * r * heads * (nope + v)  # the absorption matmuls
    assert ops["q_b_proj"].flops == 2 * b * 32 * heads * (nope + rope)
    two = {o.name: o for o in block_ops(1, shape, DENSE, Step(b, 1, ctx), 2)}
    assert two["q_a_proj"].weight_bytes == ops["q_a_proj"].weight_bytes  # replicated
    assert two["kv_b_proj"].weight_bytes == ops["kv_b_proj"].weight_bytes / 2


@pytest.mark.parametrize("family", MOE)
def test_experts_at_4_bits_shrink_the_weights_by_their_share(family):
    shape = shape_from_config(_config(family))
    plan = Plan(None, (Rule(r"re:.*\.mlp\.experts\.\d+\..*", W4),))
    prec = precision_for(shape, plan)
    experts = [(n, lin) for n, lin in shape.named_linears() if ".experts." in n]
    assert experts and set(prec.weight_bits) == set(shape.linear_names())
    saved = sum(
        lin.in_features
        * lin.out_features
        * (16 - W4.bits_per_weight(lin.out_features, lin.in_features))
        for _, lin in experts
    )
    full = memory_per_gpu(shape, DENSE, Layout())["weights"]
    assert full - memory_per_gpu(shape, prec, Layout())["weights"] == pytest.approx(saved / 8)
    # one decode token reads exactly its top-k experts, now at 4.5 bits per weight
    block = shape.sparse_blocks[0]
    lin = next(lin for lin in shape.mlp_linears(block) if lin.label == "experts.up_proj")
    op = {o.name: o for o in block_ops(block, shape, prec, Step(1, 1, 4), 1)}["experts.up_proj"]
    bias = lin.out_features * 2 if lin.bias else 0
    assert op.weight_bytes == pytest.approx(shape.top_k * (64 * lin.out_features * 4.5 / 8 + bias))


def test_a_plan_naming_one_expert_changes_only_that_expert():
    config = family_config("mixtral")  # 4 experts of hidden → intermediate
    shape = shape_from_config(config)
    one = "model.layers.1.mlp.experts.3.down_proj"
    prec = precision_for(shape, Plan(None, (Rule(one, W4),)))
    inter = config.intermediate_size
    bits = W4.bits_per_weight(config.hidden_size, inter)  # groups of 32 over the inputs
    groups = -(-inter // 32)
    assert prec.weight_bits[one] == pytest.approx(4 + 16 * groups / inter) == bits
    assert prec.weight_bits["model.layers.1.mlp.experts.2.down_proj"] == 16
    lin = next(lin for lin in shape.mlp_linears(1) if lin.short == "down_proj")
    assert prec.group_bits("model.layers.1", lin) == pytest.approx((3 * 16 + bits) / 4)
    with pytest.raises(ConfigError, match="unknown layer"):
        precision_for(shape, Plan(None, (Rule("model.layers.1.mlp.experts.down_proj", W4),)))


@pytest.mark.parametrize("family", SUPPORTED)
def test_every_supported_family_estimates_under_parallelism(family):
    shape = shape_from_config(_config(family))
    hw = get_hardware("h100-sxm")
    layouts = [Layout(batch=2, prompt=32, gen=4, tp=2)]
    if shape.is_moe:
        layouts.append(Layout(batch=2, prompt=32, gen=4, tp=2, ep=2))
    for layout in layouts:
        est = estimate(shape, DENSE, hw, layout)
        assert est.fits and est.tpot_s > 0 and est.memory["weights"] > 0


def test_gemma_shape_has_its_head_dim_tied_table_and_four_norms():
    shape = shape_from_config(family_config("gemma3"))
    assert (shape.head_dim, shape.tied, shape.hidden_norms, shape.qk_norm) == (16, True, 4, "head")
    names = [op.name for op in block_ops(0, shape, DENSE, Step(1, 1, 4), 1)]
    assert {"attn_out_norm", "mlp_out_norm", "qk_norm"} <= set(names)


@pytest.mark.parametrize("model_type", ["opt", "gpt2", "gemma3", "deepseek_v2"])
def test_an_unknown_model_type_is_refused_by_name(model_type):
    with pytest.raises(ConfigError, match=f"not {model_type!r}"):
        shape_from_config({"model_type": model_type, "hidden_size": 64})


def test_a_missing_field_names_the_family():
    with pytest.raises(ConfigError, match="deepseek_v3 config lacks a field"):
        shape_from_config(
            {"model_type": "deepseek_v3", "hidden_size": 64, "num_attention_heads": 4,
             "num_hidden_layers": 2, "intermediate_size": 96, "vocab_size": 320}
        )  # fmt: skip


def test_shape_is_frozen_data():
    shape = shape_from_config(family_config("mixtral"))
    assert isinstance(shape, ModelShape) and shape.sparse_blocks == (0, 1)
    with pytest.raises(AttributeError):
        shape.layers = 3  # type: ignore[misc]
