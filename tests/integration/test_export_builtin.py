"""Export of the real built-in model: the GGUF file (with the source GGUF's tokenizer metadata)
and the compressed-tensors directory load in transformers with the logits lowbit evaluated, and
their sizes are the plan's predicted bytes plus metadata.

Protocol (small enough for CI): RTN INT4 group 32 symmetric (Q4_0's layout); logits on the
first 128 tokens of WikiText-2 raw test.
"""

from __future__ import annotations

import pytest
import torch

from lowbit import api
from lowbit.algorithms import RTNConfig
from lowbit.evaluation import text as T
from lowbit.formats import IntFormat, PerGroup
from lowbit.plan import LayerSpec, uniform_plan
from tests.conftest import require_builtin_model, require_shared_data

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def builtin_q4():
    require_builtin_model()
    data = require_shared_data()
    handle = api.load("smollm2-135m")
    ids = T.tokenize(
        handle.load_tokenizer(), T.load_text(T.FileText(data / "wikitext-2-raw" / "wiki.test.raw"))
    )
    ids = ids[:128].reshape(1, -1)
    spec = LayerSpec(IntFormat(4), PerGroup(32), RTNConfig())
    qm = api.quantize(handle, uniform_plan(spec), None)
    with torch.no_grad():
        ref = api.fake_quant_model(handle, qm)(ids).logits
    return handle, qm, ids, ref


def test_gguf_export_is_exact_and_keeps_the_tokenizer(builtin_q4, tmp_path):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    handle, qm, ids, ref = builtin_q4
    report = api.export(qm, api.fake_quant_model(handle, qm), "gguf", tmp_path / "m.gguf")
    assert set(report.layers.values()) == {"Q4_0"} and len(report.layers) == 210
    assert 0 < report.size_bytes - report.predicted_bytes < 2_500_000  # tokenizer metadata
    fields = GGUFReader(tmp_path / "m.gguf").fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert len(fields["tokenizer.ggml.tokens"].contents()) == 49152
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(ids).logits, ref)


def test_compressed_tensors_export_is_exact(builtin_q4, tmp_path):
    from transformers import AutoModelForCausalLM

    handle, qm, ids, ref = builtin_q4
    report = api.export(qm, api.fake_quant_model(handle, qm), "compressed-tensors", tmp_path / "ct")
    weights = report.files["model.safetensors"]
    assert 0 < weights - report.predicted_bytes < 200_000  # header and weight_shape tensors
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(ids).logits, ref)


@pytest.mark.slow
def test_saved_model_exports_keep_the_source_gguf_metadata(builtin_q4, tmp_path):
    from gguf import GGUFReader

    _, qm, _, _ = builtin_q4
    api.save(qm, tmp_path / "saved", {})
    saved, model = api.load_saved(tmp_path / "saved")
    assert saved.handle.source == "smollm2-135m"
    report = api.export(saved, model, "gguf", tmp_path / "m.gguf")
    assert report.max_weight_error == 0.0 and not report.notes
    assert GGUFReader(tmp_path / "m.gguf").fields["tokenizer.ggml.pre"].contents() == "smollm"
