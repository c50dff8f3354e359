"""Save → load gives identical logits, and the saved codes are the evaluated ones."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import ActOrder, GPTQConfig, RTNConfig
from lowbit.errors import OutputExistsError, OutputPathError
from lowbit.formats import (
    IntFormat,
    LUTFormat,
    MSEClip,
    MXFormat,
    NF4Format,
    NVFP4Format,
    PerChannel,
    PerGroup,
)
from lowbit.models.fakequant import apply_weights
from lowbit.models.quantize import PipelineConfig, quantize_model
from lowbit.models.saving import load_quantized, save_quantized
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec, uniform_plan

SPECS = [
    LayerSpec(IntFormat(4), PerGroup(24), GPTQConfig(act_order=ActOrder.GROUP)),
    LayerSpec(IntFormat(3, symmetric=False), PerGroup(16), GPTQConfig(act_order=ActOrder.STATIC)),
    LayerSpec(IntFormat(8), PerChannel(), RTNConfig()),
    LayerSpec(IntFormat(2, symmetric=False), PerGroup(64), GPTQConfig(act_order=ActOrder.OFF)),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_save_load_identical_logits(tiny_any, tmp_path, spec):
    handle = resolve_model(str(tiny_any))
    torch.manual_seed(0)
    ids = torch.randint(0, handle.config.vocab_size, (4, 32))
    qm = quantize_model(handle, uniform_plan(spec), ids, pipeline=PipelineConfig(chunk_size=2))
    evaluated = apply_weights(handle.load_model(), qm.weights)
    out = save_quantized(qm, tmp_path / "q", {"test": True})
    model, weights, manifest = load_quantized(out)
    with torch.inference_mode():
        a = evaluated(input_ids=ids).logits
        b = model(input_ids=ids).logits
    assert torch.equal(a, b)
    for name, qw in qm.weights.items():
        assert torch.equal(weights[name].codes, qw.codes)
        assert torch.equal(weights[name].scale, qw.scale)
    assert manifest["plan"] == uniform_plan(spec).to_dict()


def test_saved_size_matches_counted_bits(tiny_llama, tmp_path):
    handle = resolve_model(str(tiny_llama))
    qm = quantize_model(
        handle, uniform_plan(LayerSpec(IntFormat(4), PerGroup(32), RTNConfig())), None
    )
    out = save_quantized(qm, tmp_path / "q", {})
    from safetensors import safe_open

    stored = 0
    for file in out.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as reader:
            stored += sum(
                reader.get_tensor(k).numel() * reader.get_tensor(k).element_size()
                for k in reader.keys()
                if k.endswith((".qcodes", ".qscale", ".qzero"))
            )
    counted = sum(w.n_bits() for w in qm.weights.values()) / 8
    assert stored == pytest.approx(counted, abs=len(qm.weights))  # ≤ 1 byte of padding each


def test_existing_output_is_refused_and_untouched(tiny_llama, tmp_path):
    handle = resolve_model(str(tiny_llama))
    qm = quantize_model(
        handle, uniform_plan(LayerSpec(IntFormat(4), PerGroup(32), RTNConfig())), None
    )
    target = tmp_path / "q"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        save_quantized(qm, target, {})
    assert (target / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # no partial directory left behind


def test_interrupted_save_leaves_nothing(tiny_llama, tmp_path, monkeypatch):
    import lowbit.models.saving as saving

    handle = resolve_model(str(tiny_llama))
    qm = quantize_model(
        handle, uniform_plan(LayerSpec(IntFormat(4), PerGroup(32), RTNConfig())), None
    )

    def boom(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OutputPathError, match=r"no space left on the device of .*q\b"):
        saving.save_quantized(qm, tmp_path / "q", {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "spec",
    [
        LayerSpec(MXFormat("fp4_e2m1"), PerGroup(32), RTNConfig()),
        LayerSpec(NVFP4Format(), PerGroup(16), RTNConfig()),
        LayerSpec(NF4Format(), PerGroup(16), RTNConfig(MSEClip(steps=4))),
        LayerSpec(LUTFormat(3, iterations=3), PerChannel(), RTNConfig()),
    ],
    ids=lambda s: s.describe(),
)
def test_other_formats_save_and_load_with_identical_logits(tiny_llama, tmp_path, spec):
    handle = resolve_model(str(tiny_llama))
    ids = torch.randint(0, handle.config.vocab_size, (2, 16), generator=torch.Generator())
    qm = quantize_model(handle, uniform_plan(spec), None)
    evaluated = apply_weights(handle.load_model(), qm.weights)
    model, weights, manifest = load_quantized(save_quantized(qm, tmp_path / "q", {}))
    with torch.inference_mode():
        assert torch.equal(evaluated(input_ids=ids).logits, model(input_ids=ids).logits)
    for name, qw in qm.weights.items():
        assert torch.equal(weights[name].codes, qw.codes)
        assert torch.equal(weights[name].scale.view(torch.uint8), qw.scale.view(torch.uint8))
    assert manifest["plan"] == uniform_plan(spec).to_dict()


@pytest.mark.parametrize(
    ("spec", "drop", "message"),
    [
        (LayerSpec(NVFP4Format(), PerGroup(16), RTNConfig()), ".qtscale", "tensor scale"),
        (LayerSpec(NF4Format(), PerGroup(32), RTNConfig()), ".qscale", "scales are missing"),
        (LayerSpec(IntFormat(4), PerGroup(32), RTNConfig()), "shrink", "do not fit"),
    ],
)
def test_a_damaged_directory_is_named_by_layer(tiny_llama, tmp_path, spec, drop, message):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lowbit.errors import ArtefactError

    handle = resolve_model(str(tiny_llama))
    out = save_quantized(quantize_model(handle, uniform_plan(spec), None), tmp_path / "q", {})
    for path in sorted(out.glob("*.safetensors")):  # the shard holding packed layers
        with safe_open(str(path), framework="pt") as reader:
            tensors = {k: reader.get_tensor(k) for k in reader.keys()}
        if any(k.endswith(".qscale") for k in tensors):
            break
    victim = next(k for k in tensors if k.endswith(".qscale"))
    layer = victim.removesuffix(".qscale")
    if drop == "shrink":
        tensors[victim] = tensors[victim][:, :1].contiguous()
    else:
        del tensors[layer + drop]
    save_file(tensors, str(path))
    with pytest.raises(ArtefactError, match=f"layer {layer}: .*{message}"):
        load_quantized(out)
