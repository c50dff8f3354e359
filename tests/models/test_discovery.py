"""Architecture discovery: it agrees with the hand-written family specs, finds Gemma's (1 + w)
norms (whose folding keeps the block's function), and names what it cannot describe."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from lowbit.algorithms import SmoothQuantConfig
from lowbit.errors import ConfigError, ModelSourceError
from lowbit.formats import IntFormat, PerGroup
from lowbit.models.arch import SmoothingPair, family_spec
from lowbit.models.discover import discover_architecture, find_blocks
from lowbit.models.experts import linearize_experts
from lowbit.models.quantize import quantize_model
from lowbit.models.smoothing import fold_scales, pair_applies, smooth_block
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec, Plan, Rule
from lowbit.runtime.runner import Activations, Chunk, hidden_of
from tests.helpers.families import family_config
from tests.helpers.tiny import config_for, make_tiny_model


@pytest.mark.parametrize(
    ("family", "kv_heads"),
    [("llama", 4), ("llama", 2), ("mistral", 2), ("qwen2", 4), ("qwen3", 2), ("opt", None),
     ("phi3", 4)],
)  # fmt: skip
def test_discovery_equals_the_hand_written_spec(family, kv_heads):
    config = config_for(family) if family in ("llama", "qwen3", "opt") else family_config(family)
    if kv_heads is not None:
        config.num_key_value_heads = kv_heads
    found = discover_architecture(config, family, hand_written=False)
    spec = family_spec(config.model_type)
    assert found.origin == "discovered" and spec is not None
    assert (found.blocks_path, found.embed_path) == (spec.blocks_path, spec.embed_path)
    block = _applicable(spec.blocks[0], config)
    for discovered in found.blocks:
        assert discovered.structure() == block.structure(), family


def _applicable(spec, config):
    """The hand-written pairs that apply to this model (v_proj → o_proj needs as many key/value
    heads as query heads), in discovery's order (norm pairs first)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    block = find_blocks(model, config, "x")[1][0]
    pairs = [p for p in spec.smoothing_pairs if pair_applies(block, p)]
    ordered = [p for p in pairs if not p.prev_is_linear] + [p for p in pairs if p.prev_is_linear]
    return replace(spec, smoothing_pairs=tuple(ordered))


def _block_and_inputs(family, tiny_root):
    handle = resolve_model(str(make_tiny_model(tiny_root, family)))
    model = handle.load_model()
    blocks = model.get_submodule(handle.arch.blocks_path)
    seen = []
    hook = blocks[0].register_forward_pre_hook(
        lambda m, a, k: seen.append((a, dict(k))), with_kwargs=True
    )
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, handle.config.vocab_size, (2, 24), generator=gen)
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    hook.remove()
    return handle, blocks[0], seen[0]


def test_gemma_norms_fold_as_one_plus_w(tiny_root):
    """Gemma's RMSNorm scales by (1 + w): discovery says so, and folding random scales that
    way keeps the block's output; folding them as w would not."""
    handle, block, (args, kwargs) = _block_and_inputs("gemma2", tiny_root)
    pairs = [p for p in handle.arch.block(0).smoothing_pairs if not p.prev_is_linear]
    assert {p.prev for p in pairs} == {"input_layernorm", "pre_feedforward_layernorm"}
    assert all(p.norm_offset == 1.0 for p in pairs)
    with torch.no_grad():
        torch.nn.init.uniform_(block.input_layernorm.weight, -0.5, 0.5)
        ref = hidden_of(block(*args, **kwargs))
        s = torch.rand(block.input_layernorm.weight.numel()) + 0.5
        for offset, same in ((1.0, True), (0.0, False)):
            clone = copy.deepcopy(block)
            fold_scales(clone, replace(pairs[0], norm_offset=offset), s)
            out = hidden_of(clone(*args, **kwargs))
            assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5) is same, offset


def test_smoothquant_leaves_an_unquantized_gemma_block_unchanged(tiny_root):
    handle, block, (args, kwargs) = _block_and_inputs("gemma3", tiny_root)
    with torch.no_grad():
        for norm in (block.input_layernorm, block.pre_feedforward_layernorm):
            torch.nn.init.uniform_(norm.weight, -0.5, 0.5)
        ref = hidden_of(block(*args, **kwargs))
        acts = Activations([Chunk(args[0], kwargs)], args[0].device, args[0].device)
        done = smooth_block(block, "b", acts, handle.arch.block(0), {}, SmoothQuantConfig(0.5))
        out = hidden_of(block(*args, **kwargs))
    assert done.tensors  # the norms were rescaled …
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)  # … and the function is the same


def test_a_model_whose_blocks_cannot_be_found():
    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(2, 2)])

    config = family_config("llama3")
    with pytest.raises(ModelSourceError, match="cannot find the decoder blocks.*NoBlocks"):
        find_blocks(NoBlocks(), config, "m")


def test_a_fused_expert_layout_that_is_not_understood():
    class Odd(nn.Module):  # 3-D expert weights, a gate, but no gating function
        def __init__(self):
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.zeros(2, 8, 4))
            self.down_proj = nn.Parameter(torch.zeros(2, 4, 4))

    holder = nn.Module()
    holder.experts = Odd()
    with pytest.raises(ModelSourceError, match="experts.*Odd.*not understood"):
        linearize_experts(holder)


def test_a_plan_that_names_a_router_is_refused(tiny_root):
    handle = resolve_model(str(make_tiny_model(tiny_root, "qwen3_moe")))
    router = handle.arch.routers()[0]
    spec = LayerSpec(IntFormat(4), PerGroup(16))
    with pytest.raises(ConfigError, match=f"{router}.*router.*remove the rule"):
        quantize_model(handle, Plan(spec, (Rule(router, spec),)), None)


def test_smoothing_pair_offsets_are_data():
    assert SmoothingPair("n", ("a",)).norm_offset == 0.0


def test_a_config_with_read_only_widths_is_discovered():
    """Falcon derives head_dim from the other widths (a read-only property): the tiny twin
    leaves it alone."""
    from transformers import FalconConfig

    config = FalconConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        new_decoder_architecture=True, num_kv_heads=2,
    )  # fmt: skip
    found = discover_architecture(config, "falcon")
    assert found.blocks and not found.unsupported, found.unsupported


def test_a_released_tied_head_frees_its_memory(tiny_llama):
    handle = resolve_model(str(tiny_llama))
    assert handle.config.tie_word_embeddings
    lazy = handle.lazy()
    paths = lazy.materialize_outside(head=True)
    head = lazy.model.get_output_embeddings()
    assert head.weight.device.type == "cpu"
    lazy.release_outside(paths)
    assert head.weight.device.type == "meta"


def test_stage_inputs_are_the_runner_s_own_chunks():
    """A stage that consumes its inputs (the staged runner) frees them: the activations a
    block is given are the same chunk objects, set to its keyword arguments."""
    kw0, kw1 = {"a": 0}, {"a": 1}
    chunk = Chunk(torch.zeros(1, 2, 4), kw0, (kw0, kw1))
    acts = Activations([chunk], torch.device("cpu"), torch.device("cpu"))
    assert acts.at_block(1) is acts and chunk.kwargs is kw1
