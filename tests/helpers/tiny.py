"""Tiny random models built offline (no hub): Llama, Qwen3 and OPT families, each saved as a
Hugging Face directory with safetensors weights and a small byte-level BPE tokenizer."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

VOCAB = 320


@cache
def _tokenizer_dir(root: Path) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from lowbit.evaluation.text import BuiltinText, load_text

    text = load_text(BuiltinText("python-docs", "calib"))[:200_000]
    bpe = ByteLevelBPETokenizer()
    # two ids are left for the <s> and </s> added below, so every token has an embedding row
    bpe.train_from_iterator([text], vocab_size=VOCAB - 2, min_frequency=2, show_progress=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="</s>", bos_token="<s>"
    )
    out = root / "tokenizer"
    tok.save_pretrained(out)
    return out


def config_for(family: str):
    from transformers import LlamaConfig, OPTConfig, Qwen3Config

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
    )
    if family == "llama":
        return LlamaConfig(
            intermediate_size=96, num_key_value_heads=2, tie_word_embeddings=True, **common
        )
    if family == "qwen3":
        return Qwen3Config(
            intermediate_size=96,
            num_key_value_heads=2,
            head_dim=16,
            tie_word_embeddings=False,
            **common,
        )
    if family == "opt":
        return OPTConfig(
            ffn_dim=96,
            word_embed_proj_dim=64,
            **{k: v for k, v in common.items() if k != "num_hidden_layers"},
            num_hidden_layers=2,
            do_layer_norm_before=True,
        )
    from tests.helpers.families import family_config

    return family_config(family)


def wide_llama_config():
    """A two-block Llama wide enough that its linears (192 × 192 and 192 × 384) hold more than
    torch's reduction grain (32,768 elements): a full ``sum()`` of one is split across threads,
    so a figure summed that way differs between one thread and two (issue 17)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=192,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )


def save_tiny_model(root: Path, name: str, config, seed: int = 0) -> Path:
    """Save a tiny random model of ``config`` with the tiny tokenizer under ``root/name``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = root / name
    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    AutoTokenizer.from_pretrained(_tokenizer_dir(root)).save_pretrained(out)
    return out


def make_tiny_model(root: Path, family: str = "llama", seed: int = 0) -> Path:
    """Save a tiny random model of ``family`` with a tokenizer under ``root/family``."""
    out = root / family
    if (out / "config.json").is_file():
        return out
    return save_tiny_model(root, family, config_for(family), seed)


def with_tokenizer(model_dir: Path, out: Path, kind: str) -> Path:
    """A copy of the tiny model at ``model_dir`` under ``out`` (same weights) whose tokenizer
    ``kind`` is ``"adds-bos"`` (adds its BOS token by default: saved with a BOS post-processor,
    as Llama-3's tokenizers are) or ``"no-bos-token"`` (has no BOS token at all)."""
    import json
    import shutil

    from transformers import AutoTokenizer

    if kind not in ("adds-bos", "no-bos-token"):
        raise ValueError(kind)
    if (out / "config.json").is_file():
        return out
    shutil.copytree(model_dir, out)
    if kind == "adds-bos":
        AutoTokenizer.from_pretrained(model_dir, add_bos_token=True).save_pretrained(out)
    else:
        config = json.loads((out / "tokenizer_config.json").read_text())
        config.pop("bos_token", None)
        (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out
