"""GGML formats (Q4_K, Q5_K, Q6_K and the fallbacks Q5_0, Q5_1, Q8_0) against the gguf library
(gguf-py, llama.cpp's own Python package) as the independent reference: its dequantizers read
lowbit's blocks back bit for bit, its quantizers give the same bytes for the fallback types,
and the bits per weight are the bytes of a block. gguf-py has no k-quant quantizer: the k-quant
bytes are checked against llama.cpp's C (a committed fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import Q4_K, dequantize, quantize

from lowbit.errors import ConfigError
from lowbit.export.gguf_kblocks import ggml_blocks
from lowbit.formats import GGMLFormat, MSEClip, PerGroup, format_from_dict, format_to_dict
from lowbit.formats import ggml_params as P
from lowbit.formats.quantize import quantize_weight

# llama.cpp's own k-quant bytes (ggml-quants.c's quantize_row_q{4,5,6}_K_ref, compiled from the
# llama-cpp-python 0.3.16 sdist) for synthetic weights; made by bench/kquant_reference.py --fixture
LLAMA_KQUANT = Path(__file__).parent / "data" / "llama_kquant.safetensors"

KINDS = ["q4_k", "q5_k", "q6_k", "q5_0", "q5_1", "q8_0"]
COVER = [GGMLFormat(k, rule="cover") for k in ("q4_k", "q5_k", "q6_k")]
BPW = {"q4_k": 4.5, "q5_k": 5.5, "q6_k": 6.5625, "q5_0": 5.5, "q5_1": 6.0, "q8_0": 8.5}


def _weight(cols: int = 512, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(6, cols, generator=g) * 0.05
    W[0, :32] = 0.0  # an all-zero sub-block
    W[1, 40] = 0.9  # an outlier
    W[2] = W[2].abs()  # a row without negative weights (min 0)
    return W


def _gguf(qw) -> np.ndarray:
    """What llama.cpp reads: lowbit's blocks dequantized by gguf-py."""
    kind = qw.fmt.kind
    data = ggml_blocks(kind, qw.codes.numpy(), qw.scale.numpy())
    ggml_type = GGMLQuantizationType[kind.upper()]
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    assert data.dtype == np.uint8 and data.shape[1] == qw.shape[1] // block * type_size
    return dequantize(data, ggml_type)


@pytest.mark.parametrize("clipping", [None, MSEClip(8, 0.3)], ids=["minmax", "mse"])
@pytest.mark.parametrize(
    "fmt", [GGMLFormat(k) for k in KINDS] + COVER, ids=lambda f: f"{f.kind}-{f.rule}"
)
def test_gguf_reads_back_the_evaluated_weight_bit_exactly(fmt, clipping):
    qw = quantize_weight(_weight(), fmt, PerGroup(fmt.spec.block), clipping)
    assert qw.fmt == fmt
    assert np.array_equal(_gguf(qw), qw.dequantize().numpy())


@pytest.mark.parametrize("kind", ["q5_0", "q5_1", "q8_0"])
def test_fallback_types_are_ggmls_reference_quantizer(kind):
    """With min-max ranges the bytes are gguf.quants.quantize's (ggml-quants.c's reference)."""
    W = _weight()
    qw = quantize_weight(W, GGMLFormat(kind), PerGroup(32))
    ours = ggml_blocks(kind, qw.codes.numpy(), qw.scale.numpy())
    assert np.array_equal(ours, quantize(W.numpy(), GGMLQuantizationType[kind.upper()]))


def test_q5_0_tie_takes_the_sign_of_the_first_extreme_as_ggml_does():
    """Blocks whose min and max have equal magnitude (common on a Q4_1 grid, as in the built-in
    model): ggml-quants.c keeps the first weight of largest magnitude, so d's sign follows it."""
    W = _weight(64)
    W[:, ::32] = 0.5  # every block's first weight is its max ...
    W[:, 5::32] = -0.5  # ... and its min has the same magnitude
    W[3, 0], W[3, 32] = -0.5, -0.5  # row 3: the negative extreme comes first
    W[4, 7] = 0.5  # row 4: two positive extremes, one negative
    qw = quantize_weight(W, GGMLFormat("q5_0"), PerGroup(32))
    ours = ggml_blocks("q5_0", qw.codes.numpy(), qw.scale.numpy())
    assert np.array_equal(ours, quantize(W.numpy(), GGMLQuantizationType.Q5_0))
    assert np.array_equal(_gguf(qw), qw.dequantize().numpy())


@pytest.mark.parametrize("kind", KINDS)
def test_bits_per_weight_are_the_block_bytes(kind):
    fmt = GGMLFormat(kind)
    qw = quantize_weight(_weight(), fmt, PerGroup(fmt.spec.block))
    type_size = GGML_QUANT_SIZES[GGMLQuantizationType[kind.upper()]][1]
    assert qw.bits_per_weight() == BPW[kind] == type_size * 8 / fmt.spec.block
    assert fmt.bits_per_weight(512, PerGroup(fmt.spec.block)) == BPW[kind]


@pytest.mark.parametrize(
    ("kind", "fallback"), [("q4_k", "q5_0"), ("q5_k", "q5_1"), ("q6_k", "q8_0")]
)
def test_rows_not_a_multiple_of_256_fall_back_by_name(kind, fallback):
    """llama.cpp's llama_tensor_get_type: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0."""
    fmt = GGMLFormat(kind)
    W = _weight(576)  # SmolLM2's hidden size: 2.25 super-blocks
    qw = quantize_weight(W, fmt, PerGroup(256))
    assert qw.fmt == GGMLFormat(fallback) and qw.granularity == PerGroup(32)
    assert fmt.bits_per_weight(576, PerGroup(256)) == BPW[fallback] == qw.bits_per_weight()
    assert np.array_equal(_gguf(qw), qw.dequantize().numpy())
    reference = quantize(W.numpy(), GGMLQuantizationType[fallback.upper()])
    assert np.array_equal(ggml_blocks(fallback, qw.codes.numpy(), qw.scale.numpy()), reference)


def test_a_width_no_block_fits_is_refused():
    with pytest.raises(ConfigError, match="Q4_K needs rows of a multiple of 256.*Q5_0.*got 80"):
        quantize_weight(_weight(80), GGMLFormat("q4_k"), PerGroup(256))


def test_granularity_is_the_block():
    with pytest.raises(ConfigError, match="Q4_K uses blocks of 256"):
        GGMLFormat("q4_k").check_granularity(PerGroup(32))
    with pytest.raises(ConfigError, match="no GGML type 'q3_k'"):
        GGMLFormat("q3_k")


@pytest.mark.parametrize("kind", KINDS)
def test_format_dict_round_trip(kind):
    fmt = GGMLFormat(kind)
    assert format_from_dict(format_to_dict(fmt)) == fmt


def test_scale_min_packing_is_ggmls_layout():
    """Every 6-bit value in every slot survives pack → gguf's get_scale_min."""
    g = torch.Generator().manual_seed(3)
    sc = torch.randint(0, 64, (64, 8), generator=g)
    sc[0], sc[1] = torch.arange(8), 63
    m = torch.randint(0, 64, (64, 8), generator=g)
    packed = P.pack_scale_min(sc, m)
    got_sc, got_m = Q4_K.get_scale_min(packed.numpy())
    assert np.array_equal(got_sc, sc.numpy()) and np.array_equal(got_m, m.numpy())
    back_sc, back_m = P.unpack_scale_min(packed)
    assert torch.equal(back_sc.long(), sc) and torch.equal(back_m.long(), m)


@pytest.mark.parametrize(("kind", "steps"), [("q4_k", 0.5), ("q5_k", 0.5), ("q6_k", 1.0)])
def test_k_quants_clip_nothing_inside_the_range(kind, steps):
    """Min-max k-quants under the cover rule round scales up: every weight is within half a step
    of its value (Q6_K: one step, its symmetric grid ends at +31 where the extreme sits on -32)."""
    fmt = GGMLFormat(kind, rule="cover")
    W = _weight()
    qw = quantize_weight(W, fmt, PerGroup(256))
    step, _ = P.affine(kind, qw.scale)
    bound = step.abs().repeat_interleave(fmt.spec.sub, dim=1) * steps
    assert bool(((qw.dequantize() - W).abs() <= bound * (1 + 1e-5) + 1e-12).all())


def test_more_bits_are_closer():
    W = _weight()
    err = {
        k: float((quantize_weight(W, GGMLFormat(k), PerGroup(256)).dequantize() - W).norm())
        for k in ("q4_k", "q5_k", "q6_k")
    }
    assert err["q4_k"] > err["q5_k"] > err["q6_k"] > 0


def _llama_cases() -> list[str]:
    from safetensors import safe_open

    with safe_open(str(LLAMA_KQUANT), "np") as f:
        return sorted(k for k in f.keys() if not k.startswith("x."))


@pytest.mark.parametrize("key", _llama_cases())
def test_llama_rule_writes_llama_cpps_bytes(key):
    """The default rule is llama.cpp's reference k-quant quantizer: byte for byte on synthetic
    weights with an all-zero super-block, zero and tiny sub-blocks, no negatives, heavy tails."""
    from safetensors.numpy import load_file

    data = load_file(str(LLAMA_KQUANT))
    kind, case = key.split(".")
    W = torch.from_numpy(data[f"x.{case}"])
    qw = quantize_weight(W, GGMLFormat(kind), PerGroup(256))
    ours = ggml_blocks(kind, qw.codes.numpy(), qw.scale.numpy())
    assert ours.shape == data[key].shape
    assert np.array_equal(ours, data[key])


@pytest.mark.parametrize("kind", ["q4_k", "q5_k", "q6_k"])
def test_llama_rule_has_less_error_than_covering(kind):
    """llama.cpp's search fits each sub-block's grid by least squares; covering the range
    wastes levels on the extremes, so its weight error is larger overall."""
    W = torch.randn(32, 1024, generator=torch.Generator().manual_seed(1)) * 0.02
    err = {}
    for rule in ("llama", "cover"):
        Wq = quantize_weight(W, GGMLFormat(kind, rule=rule), PerGroup(256)).dequantize()
        err[rule] = float(((Wq - W) ** 2).sum())
    assert err["llama"] < 0.95 * err["cover"]


def test_unknown_rule_is_refused_with_the_rules_named():
    with pytest.raises(ConfigError, match="llama"):
        GGMLFormat("q4_k", rule="nearest")
    with pytest.raises(ConfigError, match="k-quants"):
        GGMLFormat("q5_0", rule="cover")


def test_rule_survives_a_format_round_trip():
    fmt = GGMLFormat("q5_k", rule="cover")
    assert format_from_dict(format_to_dict(fmt)) == fmt
    assert format_from_dict({"type": "ggml", "kind": "q5_k"}).rule == "llama"
