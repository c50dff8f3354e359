"""Model sources and their bad inputs: each error names the input and the fix."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lowbit.errors import ModelSourceError
from lowbit.models.arch import ARCHITECTURES, family_spec
from lowbit.models.sources import resolve_model


def test_a_model_directory_resolves(tiny_any):
    handle = resolve_model(str(tiny_any))
    assert handle.arch.name in ("llama", "opt")
    assert len(handle.fingerprint) == 16
    assert handle.weight_files


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
def test_the_llama_spec_serves_its_family(model_type):
    spec = family_spec(model_type)
    assert spec is not None and spec.name == "llama"


def test_missing_path():
    with pytest.raises(ModelSourceError, match="not found.*built-in name"):
        resolve_model("/nonexistent/model")


def test_directory_without_weights(tmp_path, tiny_llama):
    shutil.copy(tiny_llama / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelSourceError, match="holds no weights"):
        resolve_model(str(tmp_path))


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_bin_only_model_is_refused_unless_opted_in(tmp_path, tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    for f in [*tiny_llama.glob("tokenizer*"), tiny_llama / "config.json"]:
        shutil.copy(f, tmp_path / f.name)
    assert not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(ModelSourceError, match=r"\.bin.*arbitrary code.*--allow-pickle"):
        resolve_model(str(tmp_path))
    handle = resolve_model(str(tmp_path), allow_pickle=True)
    converted = handle.load_model()
    for (n, a), (_, b) in zip(converted.named_parameters(), model.named_parameters(), strict=True):
        assert torch.equal(a, b), n


def test_truncated_safetensors(tmp_path, tiny_llama):
    bad = tmp_path / "m"
    shutil.copytree(tiny_llama, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelSourceError, match="truncated"):
        resolve_model(str(bad))


def test_truncated_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 5)
    with pytest.raises(ModelSourceError, match="not a readable GGUF"):
        resolve_model(str(bad))


def test_a_cached_gguf_conversion_is_not_parsed_again(tmp_path, tiny_llama):
    """Once converted, a GGUF file's metadata is not read again (the built-in model's took
    tens of seconds per load): a conversion in the cache under the file's fingerprint serves it,
    even when the file itself could no longer be parsed."""
    from lowbit.models.files import fingerprint_files
    from lowbit.models.sources import cache_root

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 5)  # unreadable as GGUF
    shutil.copytree(tiny_llama, cache_root() / "models" / f"m-{fingerprint_files([gguf])}")
    handle = resolve_model(str(gguf))
    assert handle.fingerprint == resolve_model(str(tiny_llama)).fingerprint


def test_a_family_without_quantizable_linears_is_evaluated_but_not_quantized(tmp_path, tiny_llama):
    """GPT-2 (Conv1D projections), which has no spec: evaluated exactly (against its plain
    forward), quantization refused by name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

    from lowbit import api
    from lowbit.models.arch import check_quantizable

    cfg = GPT2Config(vocab_size=320, n_embd=32, n_layer=2, n_head=2, n_positions=128)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "gpt2")
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(tmp_path / "gpt2")
    handle = resolve_model(str(tmp_path / "gpt2"))
    assert handle.arch.blocks_path == "transformer.h"
    text = api.TextConfig("builtin:python-docs", 64, 4, 0)
    windows = api.text_windows(handle, text, calibration=False)
    ppl = api.perplexity(api.model_view(handle), windows).perplexity
    with torch.no_grad():
        logits = handle.load_model()(windows.ids).logits[:, :-1].double()
    nll = -torch.log_softmax(logits, -1).gather(-1, windows.ids[:, 1:, None]).mean()
    assert ppl == pytest.approx(float(nll.exp()), rel=1e-6)
    with pytest.raises(ModelSourceError, match="cannot quantize.*no nn.Linear.*Conv1D"):
        check_quantizable(handle.arch, handle.source)


def test_a_model_type_transformers_does_not_know(tmp_path, tiny_llama):
    bad = tmp_path / "m"
    shutil.copytree(tiny_llama, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "no_such_family"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelSourceError, match="config.json.*no_such_family"):
        resolve_model(str(bad))


def test_unknown_builtin_suggests():
    from lowbit.models.builtin import BUILTIN_MODELS

    with pytest.raises(KeyError, match="did you mean 'smollm2-135m'"):
        BUILTIN_MODELS.get("smollm2-135")


def test_every_spec_names_distinct_linears():
    for _, spec in ARCHITECTURES:
        assert len(set(spec.linear_names)) == len(spec.linear_names)
