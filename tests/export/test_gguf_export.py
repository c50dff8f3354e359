"""GGUF export of tiny models: read back by the gguf library and by transformers' GGUF loader,
the weights and logits are the ones lowbit evaluated; plans GGUF cannot hold are refused."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from lowbit import api
from lowbit.algorithms import ActOrder, GPTQConfig
from lowbit.errors import ExportError, OutputExistsError, OutputPathError
from lowbit.export.gguf_blocks import permute_rows
from lowbit.plan import uniform_plan
from tests.export.shared import IDS, logits_of, mixed_plan, quantized, spec
from tests.helpers.tiny import make_tiny_model


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


def _export(qm, model, out: Path, **kw):
    return api.export(qm, model, "gguf", out, **kw)


@pytest.mark.parametrize(("bits", "sym", "kind"), [(4, True, "Q4_0"), (8, True, "Q8_0")])
def test_exact_types_load_with_identical_logits(tiny_llama, tmp_path, bits, sym, kind):
    qm, model, ref = quantized(tiny_llama, uniform_plan(spec(bits, sym)))
    report = _export(qm, model, tmp_path / "m.gguf")
    assert set(report.layers.values()) == {kind}
    assert report.max_weight_error == 0.0 and report.kept_max_error == 0.0
    assert torch.equal(logits_of(_load_gguf(tmp_path / "m.gguf")), ref)


def test_stored_blocks_are_lowbits_weights(tiny_llama, tmp_path):
    qm, model, _ = quantized(tiny_llama, mixed_plan())
    _export(qm, model, tmp_path / "m.gguf")
    tensors = {t.name: t for t in GGUFReader(tmp_path / "m.gguf").tensors}
    n_head, n_kv = 4, 2
    for block in range(2):
        for hf, name, heads in (
            ("self_attn.q_proj", "attn_q", n_head),
            ("self_attn.k_proj", "attn_k", n_kv),
            ("self_attn.v_proj", "attn_v", None),
            ("mlp.gate_proj", "ffn_gate", None),
        ):
            t = tensors[f"blk.{block}.{name}.weight"]
            got = dequantize(t.data, t.tensor_type)
            want = qm.weights[f"model.layers.{block}.{hf}"].dequantize().numpy()
            want = permute_rows(want, heads) if heads else want
            assert np.array_equal(got, want), (block, hf)
        down = tensors[f"blk.{block}.ffn_down.weight"]
        assert down.tensor_type.name == "F32"


def test_mixed_plan_loads_with_identical_logits(tiny_llama, tmp_path):
    qm, model, ref = quantized(tiny_llama, mixed_plan())
    report = _export(qm, model, tmp_path / "m.gguf")
    assert sorted(set(report.layers.values())) == ["F32", "Q4_0", "Q8_0"]
    assert torch.equal(logits_of(_load_gguf(tmp_path / "m.gguf")), ref)


def test_gptq_weights_reach_gguf_unchanged(tiny_llama, tmp_path):
    calib = torch.randint(0, 318, (4, 32), generator=torch.Generator().manual_seed(1))
    plan = uniform_plan(spec(4, algorithm=GPTQConfig(act_order=ActOrder.STATIC)))
    qm, model, ref = quantized(tiny_llama, plan, calib)
    _export(qm, model, tmp_path / "m.gguf")
    assert torch.equal(logits_of(_load_gguf(tmp_path / "m.gguf")), ref)


def test_asymmetric_q4_1_is_within_its_reported_bound(tiny_llama, tmp_path):
    qm, model, ref = quantized(tiny_llama, uniform_plan(spec(4, sym=False)))
    report = _export(qm, model, tmp_path / "m.gguf")
    assert set(report.layers.values()) == {"Q4_1"}
    assert 0.0 < report.max_weight_error < 1e-3
    assert any("0.375 bits per weight more" in n for n in report.notes)
    loaded = _load_gguf(tmp_path / "m.gguf")
    for name, qw in qm.weights.items():
        diff = (loaded.get_submodule(name).weight - qw.dequantize()).abs().max().item()
        assert diff <= report.max_weight_error + 1e-9, name
    assert torch.allclose(logits_of(loaded), ref, atol=1e-2)


def test_metadata_built_from_config_and_tokenizer(tiny_llama, tmp_path):
    qm, model, _ = quantized(tiny_llama, uniform_plan(spec(4)))
    report = _export(qm, model, tmp_path / "m.gguf")
    fields = GGUFReader(tmp_path / "m.gguf").fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.block_count"].contents() == 2
    assert fields["llama.attention.head_count_kv"].contents() == 2
    assert len(fields["tokenizer.ggml.tokens"].contents()) == 320
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["general.file_type"].contents() == 2  # MOSTLY_Q4_0
    assert '"bits": 4' in fields["lowbit.plan"].contents()
    assert fields["tokenizer.ggml.pre"].contents() == "default"
    assert any("pre-tokenizer was not identified" in n for n in report.notes)


def test_qwen3_exports_without_reordering(tiny_root, tmp_path):
    """Another architecture (no q/k row reordering, q/k norms). transformers' qwen3 GGUF loader
    takes head_dim from its default (128), so this model uses head_dim 128."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    cfg = Qwen3Config(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=128,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    src = tmp_path / "qwen3"
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(src)
    AutoTokenizer.from_pretrained(tiny_root / "tokenizer").save_pretrained(src)
    qm, model, ref = quantized(src, uniform_plan(spec(4)))
    _export(qm, model, tmp_path / "q.gguf")
    assert GGUFReader(tmp_path / "q.gguf").fields["general.architecture"].contents() == "qwen3"
    assert torch.equal(logits_of(_load_gguf(tmp_path / "q.gguf")), ref)


@pytest.mark.parametrize(
    ("plan", "why"),
    [
        (uniform_plan(spec(4, group=64)), "groups of 32"),
        (uniform_plan(spec(3)), "no GGUF type"),
        (uniform_plan(spec(8, sym=False)), "no GGUF type"),
        (uniform_plan(spec(4, group=None)), "groups of 32"),
    ],
)
def test_unrepresentable_plans_are_refused_by_layer(tiny_llama, tmp_path, plan, why):
    qm, model, _ = quantized(tiny_llama, plan)
    with pytest.raises(ExportError, match=why) as err:
        _export(qm, model, tmp_path / "m.gguf")
    assert "model.layers.0.self_attn.q_proj" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_act_order_permutation_is_refused(tiny_llama, tmp_path):
    calib = torch.randint(0, 318, (4, 32), generator=torch.Generator().manual_seed(1))
    plan = uniform_plan(spec(4, algorithm=GPTQConfig(act_order=ActOrder.GROUP)))
    qm, model, _ = quantized(tiny_llama, plan, calib)
    with pytest.raises(ExportError, match="permutation"):
        _export(qm, model, tmp_path / "m.gguf")


def test_other_architectures_are_refused(tiny_root, tmp_path):
    qm, model, _ = quantized(make_tiny_model(tiny_root, "opt"), uniform_plan(spec(4)))
    with pytest.raises(ExportError, match="compressed-tensors instead"):
        _export(qm, model, tmp_path / "m.gguf")


def test_existing_output_is_kept(tiny_llama, tmp_path):
    qm, model, _ = quantized(tiny_llama, uniform_plan(spec(4)))
    (tmp_path / "m.gguf").write_text("mine")
    with pytest.raises(OutputExistsError):
        _export(qm, model, tmp_path / "m.gguf")
    assert (tmp_path / "m.gguf").read_text() == "mine"


def test_full_disk_leaves_nothing_behind(tiny_llama, tmp_path, monkeypatch):
    import gguf

    qm, model, _ = quantized(tiny_llama, uniform_plan(spec(4)))

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full)
    with pytest.raises(OutputPathError, match=r"no space left on the device of .*m\.gguf"):
        _export(qm, model, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_ids_fixture_is_in_vocabulary():
    assert int(IDS.max()) < 318


@pytest.mark.parametrize("name", ["fp4_e2m1", "nf4", "mxfp4"])
def test_non_integer_formats_are_not_written_as_q4_0(tiny_llama, tmp_path, name):
    """FP4 and NF4 with fp16 scales in groups of 32 look like Q4_0 by their bits; they are not."""
    from lowbit.algorithms import RTNConfig
    from lowbit.formats import FORMATS, PerGroup
    from lowbit.plan import LayerSpec

    qm, model, _ = quantized(
        tiny_llama, uniform_plan(LayerSpec(FORMATS.get(name)(), PerGroup(32), RTNConfig()))
    )
    with pytest.raises(ExportError, match=f"{name}: not an integer format"):
        _export(qm, model, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []
