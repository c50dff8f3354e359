"""A random-weight Llama-family model written shard by shard, never held whole in memory.

Weights are drawn layer by layer from a seeded normal (std 0.02; RMSNorm weights 1) and
written as bf16 safetensors shards of at most 1 GB with a ``model.safetensors.index.json``,
beside ``config.json`` and a byte-level BPE tokenizer trained (as ``tests/helpers/tiny.py``
does) on the calibration text. While each layer is in memory, a 128-token probe runs through it
in bf16 so that the activations are checked finite at every layer (the figures are returned).
The directory is built under ``<out>.partial`` and renamed when complete, so an existing
``out`` is a whole model.

Used by ``bench/bigger_than_memory.py``; also runnable alone:

    python bench/random_model.py OUT --small   # or the full ~1.6 B-parameter shape
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STD = 0.02
SHARD_BYTES = 1_000_000_000
PROBE_TOKENS = 128


@dataclass(frozen=True)
class Shape:
    """A Llama decoder's sizes (untied head, head dim hidden / heads)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def tensors(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every stored tensor, in the order they are written."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        yield "model.embed_tokens.weight", (self.vocab, h)
        for n in range(self.layers):
            p = f"model.layers.{n}."
            yield p + "input_layernorm.weight", (h,)
            yield p + "self_attn.q_proj.weight", (h, h)
            yield p + "self_attn.k_proj.weight", (kv, h)
            yield p + "self_attn.v_proj.weight", (kv, h)
            yield p + "self_attn.o_proj.weight", (h, h)
            yield p + "post_attention_layernorm.weight", (h,)
            yield p + "mlp.gate_proj.weight", (i, h)
            yield p + "mlp.up_proj.weight", (i, h)
            yield p + "mlp.down_proj.weight", (h, i)
        yield "model.norm.weight", (h,)
        yield "lm_head.weight", (self.vocab, h)

    def parameters(self) -> int:
        total = 0
        for _, dims in self.tensors():
            n = 1
            for d in dims:
                n *= d
            total += n
        return total

    def config(self, bos: int, eos: int) -> Any:
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=bos,
            eos_token_id=eos,
            dtype="bfloat16",
        )


# ≥ 1.5 B parameters, ≥ 3 GB in bf16, ≥ 6 GB in fp32: Llama-2's proportions (MLP width 11/4 of
# the hidden size, full multi-head attention) at hidden 2048, 28 blocks. With an MLP width of
# 8192 instead, GPTQ's solve on down_proj alone needs about 4 × 8192² × 4 B = 1 GiB (the
# Hessian, its copy in sweep order and the factorisation's two temporaries), which with one
# fp32 block and the interpreter does not fit a 2 GB cap: see BENCHMARKS.md.
FULL = Shape(hidden=2048, intermediate=5632, layers=28, heads=16, kv_heads=16, vocab=32000)
# ~107 M parameters, 0.21 GB in bf16, 0.43 GB in fp32 (a smaller vocabulary keeps the
# evaluation's per-window logits, which do not shrink with the model, in proportion)
SMALL = Shape(hidden=1024, intermediate=2816, layers=8, heads=16, kv_heads=4, vocab=8000)


def is_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors.index.json").is_file()


def build(shape: Shape, out: Path, text: Path, seed: int = 0) -> dict[str, Any]:
    """Write the model to ``out`` (tokenizer trained on ``text``); returns what was built."""
    import torch

    t0 = time.perf_counter()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = train_tokenizer(text, shape.vocab, tmp)
    config = shape.config(tok.bos_token_id, tok.eos_token_id)
    config.save_pretrained(tmp)
    ids = torch.tensor(tok(text.read_text()[:20_000])["input_ids"][:PROBE_TOKENS])[None]
    probe = Probe(config, ids)
    writer = ShardWriter(tmp)
    gen = torch.Generator().manual_seed(seed)
    layer: dict[str, torch.Tensor] = {}
    for name, dims in shape.tensors():
        if name.endswith("norm.weight"):
            tensor = torch.ones(dims, dtype=torch.bfloat16)
        else:
            tensor = torch.randn(dims, generator=gen).mul_(STD).to(torch.bfloat16)
        if name.startswith("model.layers."):
            layer[name] = tensor
            if name.endswith("down_proj.weight"):
                probe.layer(layer)
                layer = {}
        elif name == "model.embed_tokens.weight":
            probe.embed(tensor)
        elif name == "lm_head.weight":
            probe.head(tensor)
        writer.add(name, tensor)
    files = writer.close()
    tmp.rename(out)
    disk = sum((out / f).stat().st_size for f in files)
    return {
        "dir": str(out),
        "shape": asdict(shape),
        "parameters": shape.parameters(),
        "tokenizer_vocab": len(tok),
        "shards": files,
        "disk_bytes": disk,
        "fp32_bytes": 4 * shape.parameters(),
        "std": STD,
        "seed": seed,
        "activation_check": probe.summary(),
        "build_s": time.perf_counter() - t0,
    }


def train_tokenizer(text: Path, vocab: int, out: Path) -> Any:
    """A byte-level BPE of at most ``vocab`` tokens (two of them <s> and </s>), saved in ``out``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    lines = text.read_text().splitlines()
    bpe.train_from_iterator(lines, vocab_size=vocab - 2, min_frequency=2, show_progress=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>"
    )
    if len(tok) > vocab:
        raise SystemExit(f"the tokenizer has {len(tok)} tokens, more than the vocabulary {vocab}")
    tok.save_pretrained(out)
    return tok


class ShardWriter:
    """Tensors gathered into safetensors shards of at most ``limit`` bytes, then indexed."""

    def __init__(self, out: Path, limit: int = SHARD_BYTES) -> None:
        self.out, self.limit = out, limit
        self.pending: dict[str, Any] = {}
        self.size = 0
        self.files: list[str] = []
        self.weight_map: dict[str, str] = {}
        self.total = 0

    def add(self, name: str, tensor: Any) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.size + nbytes > self.limit:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.size += nbytes
        self.total += nbytes

    def flush(self) -> None:
        from safetensors.torch import save_file

        name = f"model-{len(self.files) + 1:05d}.safetensors"
        save_file(self.pending, str(self.out / name), metadata={"format": "pt"})
        self.weight_map.update(dict.fromkeys(self.pending, name))
        self.files.append(name)
        self.pending, self.size = {}, 0

    def close(self) -> list[str]:
        """Flush, name the shards ``model-0000k-of-0000n``, write the index; the file names."""
        if self.pending:
            self.flush()
        n = len(self.files)
        final = {f: f.replace(".safetensors", f"-of-{n:05d}.safetensors") for f in self.files}
        for old, new in final.items():
            (self.out / old).rename(self.out / new)
        index = {
            "metadata": {"total_size": self.total},
            "weight_map": {k: final[v] for k, v in self.weight_map.items()},
        }
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
        return list(final.values())


class Probe:
    """One short window run through the model in bf16 as its layers are made."""

    def __init__(self, config: Any, ids: Any) -> None:
        import copy

        import torch
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        self.config = copy.deepcopy(config)
        self.config._attn_implementation = "sdpa"
        self.ids = ids
        positions = torch.arange(ids.shape[1])[None]
        x = torch.zeros(1, ids.shape[1], config.hidden_size, dtype=torch.bfloat16)
        self.rope = LlamaRotaryEmbedding(self.config)(x, positions)
        self.h: Any = None
        self.layers: list[dict[str, float]] = []
        self.logits: dict[str, float] = {}

    def embed(self, weight: Any) -> None:
        self.h = weight[self.ids]

    def layer(self, tensors: dict[str, Any]) -> None:
        import torch
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        index = len(self.layers)
        prefix = f"model.layers.{index}."
        block = LlamaDecoderLayer(self.config, index).to(torch.bfloat16)
        block.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items()})
        with torch.no_grad():
            self.h = block(self.h, position_embeddings=self.rope)
        self.layers.append(_stats(self.h))

    def head(self, weight: Any) -> None:
        import torch

        h = self.h.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps)
        logits = (h.to(torch.bfloat16) @ weight.T).float()
        logp = torch.log_softmax(logits[0, :-1], -1)
        nll = -logp.gather(1, self.ids[0, 1:, None]).mean()
        self.logits = {**_stats(logits), "probe_perplexity": float(torch.exp(nll))}

    def summary(self) -> dict[str, Any]:
        finite = all(s["finite"] for s in self.layers) and self.logits.get("finite", False)
        if not finite:
            raise SystemExit(f"non-finite activations in bf16: {self.layers} {self.logits}")
        return {
            "dtype": "bfloat16",
            "tokens": int(self.ids.shape[1]),
            "finite": finite,
            "max_abs_hidden": max(s["max_abs"] for s in self.layers),
            "last_hidden_std": self.layers[-1]["std"],
            "per_layer_max_abs": [round(s["max_abs"], 3) for s in self.layers],
            "logits": self.logits,
        }


def _stats(x: Any) -> dict[str, Any]:
    import torch

    x = x.float()
    return {
        "finite": bool(torch.isfinite(x).all()),
        "max_abs": float(x.abs().max()),
        "std": float(x.std()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--small", action="store_true", help="~100 M parameters")
    parser.add_argument("--text", type=Path, default=None, help="tokenizer training text")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if is_complete(args.out):
        raise SystemExit(f"{args.out} already holds a model")
    from lowbit.evaluation.text import data_dir

    text = args.text or data_dir() / "wikitext-2" / "wiki.valid.tokens"
    info = build(SMALL if args.small else FULL, args.out, text, args.seed)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
