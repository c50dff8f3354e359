"""GGUF metadata: copied from the GGUF file a model came from (so llama.cpp gets the exact
tokenizer and pre-tokenizer it was converted with), or built from the Hugging Face config and
tokenizer files with the ``gguf`` library's vocabulary readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowbit.errors import ExportError
from lowbit.models.builtin import BUILTIN_MODELS, builtin_gguf

# Written by the exporter itself, never copied from the source file.
_OWN = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")


def source_gguf(source: str) -> Path | None:
    """The GGUF file a model source came from, if it came from one."""
    if source in BUILTIN_MODELS:
        return builtin_gguf(source)
    path = Path(source).expanduser()
    return path if path.suffix.lower() == ".gguf" and path.is_file() else None


def add_metadata(writer: Any, handle: Any, arch: str, file_type: int) -> list[str]:
    """Write the metadata; returns notes for the report."""
    import gguf

    notes = []
    src = source_gguf(handle.source)
    if src is not None:
        _copy_fields(writer, src, arch)
    else:
        _config_fields(writer, handle.config)
        if _tokenizer_fields(writer, handle.path, handle.config.vocab_size) == "gpt2":
            notes.append(
                "the BPE pre-tokenizer was not identified (llama.cpp recognises it by hashing "
                "its output; lowbit wrote 'default'): llama.cpp may split text differently "
                "from the original tokenizer; quantize from the model's GGUF file to keep it"
            )
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return notes


def _copy_fields(writer: Any, src: Path, arch: str) -> None:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(src)
    source_arch = reader.fields["general.architecture"].contents()
    if source_arch != arch:
        raise ExportError(
            f"{src} is a {source_arch} GGUF, but the model exports as {arch}: the quantized "
            "model does not come from this file; quantize the GGUF file itself, or its original"
        )
    for key, field in reader.fields.items():
        if key.startswith(_OWN):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub)


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ExportError("the model config has no rope_theta; cannot write GGUF rope metadata")
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise ExportError(
            f"rope scaling {kind!r} is not written by lowbit's GGUF export; export to "
            "compressed-tensors, or convert with llama.cpp's convert_hf_to_gguf.py"
        )
    return float(theta)


def _config_fields(writer: Any, config: Any) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)


def _tokenizer_fields(writer: Any, path: Path, n_vocab: int) -> str:
    """A byte-level BPE (gpt2-style) or SentencePiece (llama-style) tokenizer; returns the
    tokenizer model written."""
    import gguf
    from gguf.vocab import BpeVocab, LlamaHfVocab, SpecialVocab

    vocab: Any = None
    for kind in (BpeVocab, LlamaHfVocab):
        try:
            vocab = kind(Path(path))
            break
        except (FileNotFoundError, TypeError, ValueError, KeyError):
            continue
    if vocab is None:
        raise ExportError(
            f"{path}: no byte-level BPE or SentencePiece tokenizer (tokenizer.json) to write "
            "into the GGUF file; copy the original model's tokenizer files beside it"
        )
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    if len(tokens) > n_vocab:
        raise ExportError(
            f"{path}: the tokenizer has {len(tokens)} tokens but the model only {n_vocab} "
            "embedding rows; a GGUF file needs one row per token"
        )
    for i in range(len(tokens), n_vocab):  # embedding rows beyond the tokenizer: padding
        tokens.append(f"[PAD{i}]".encode())
        scores.append(0.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if isinstance(vocab, LlamaHfVocab):
        writer.add_token_scores(scores)
    SpecialVocab(Path(path), load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer)
    return str(vocab.tokenizer_model)
