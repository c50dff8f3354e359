"""Reference GPTQ with llm-compressor 0.14, for comparison with lowbit's own GPTQ.

Loads a Hugging Face model in fp32 on CPU, runs llm-compressor's GPTQModifier
(sequential pipeline, weight-only int, symmetric, per-group scales, lm_head left
alone) on pre-tokenized calibration windows, and writes a DENSE Hugging Face
directory holding the quantize-dequantized (fake-quant) fp32 weights, with no
quantization_config, so plain transformers loads it as an ordinary model.
Also writes llmc_result.json (timings, peak RSS, versions, scheme, checks).

Run with the separate venv made by bench/llmcompressor/setup.sh:
    bench/.venv-llmc/bin/python bench/llmcompressor/run_gptq.py \
        --model-dir /tmp/smol_hf --calib /tmp/calib8.safetensors --out /tmp/llmc_w4g64

--calib is a safetensors file with one int64 tensor `input_ids` of shape (N, seq_len).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

TOKENIZER_FILES = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\.json|merges\.txt"
    r"|chat_template\.(jinja|json))$"
)


def parse_scheme(text: str) -> tuple[int, int]:
    """Parse a scheme name like 'w4g64' into (bits, group_size)."""
    m = re.fullmatch(r"w(\d+)g(\d+)", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"scheme must look like w4g64, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--calib", type=Path, required=True, help="safetensors with input_ids (N, L)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--scheme", type=parse_scheme, default=(4, 64), help="wBITSgGROUP, default w4g64"
    )
    ap.add_argument("--bits", type=int, choices=(3, 4, 8), help="overrides --scheme bits")
    ap.add_argument("--group-size", type=int, help="overrides --scheme group size")
    ap.add_argument(
        "--actorder",
        choices=("static", "weight", "none"),
        default="static",
        help="GPTQModifier.actorder; 'static' (library default) is an alias of 'weight'",
    )
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--dampening-frac", type=float, default=0.01)
    args = ap.parse_args()
    args.bits = args.bits or args.scheme[0]
    args.group_size = args.group_size or args.scheme[1]
    return args


def build_recipe(args: argparse.Namespace) -> Any:
    """GPTQModifier with one explicit config group: int, symmetric, per-group, Linear."""
    from llmcompressor.modifiers.quantization import GPTQModifier

    weights = {
        "num_bits": args.bits,
        "type": "int",
        "symmetric": True,
        "strategy": "group",
        "group_size": args.group_size,
    }
    return GPTQModifier(
        config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
        ignore=["lm_head"],
        block_size=args.block_size,
        dampening_frac=args.dampening_frac,
        actorder=None if args.actorder == "none" else args.actorder,
    )


def max_distinct_per_group(w: Any, group_size: int) -> int:
    """Largest number of distinct values in any (row, column-group) of a 2-D weight."""
    import torch

    most = 0
    for c in range(0, w.shape[1], group_size):
        s = torch.sort(w[:, c : c + group_size], dim=1).values
        distinct = 1 + (s[:, 1:] != s[:, :-1]).sum(dim=1)
        most = max(most, int(distinct.max()))
    return most


def main() -> None:
    t0 = time.perf_counter()
    args = parse_args()

    import torch
    from compressed_tensors.quantization import fake_quantize
    from datasets import Dataset
    from llmcompressor import oneshot
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    ids = load_file(str(args.calib))["input_ids"].to(torch.int64)
    n, seq_len = ids.shape
    ds = Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()}
    )

    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    recipe = build_recipe(args)

    t1 = time.perf_counter()
    oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=ds,
        recipe=recipe,
        num_calibration_samples=n,
        max_seq_length=seq_len,
        shuffle_calibration_samples=False,
        batch_size=1,
        pipeline="sequential",
    )
    oneshot_s = time.perf_counter() - t1
    # Peak RSS of loading and quantizing, before the dense copy below is built for saving.
    oneshot_peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    # Fake-quantize each quantized Linear with its final qparams: exactly what the
    # model computes in forward. GPTQ already left the weights on the grid, so this
    # must match them; the check is recorded.
    dense = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    state = dense.state_dict()
    quantized: dict[str, Any] = {}
    resolved_args = None
    max_grid_err = 0.0
    max_distinct = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            qargs = getattr(getattr(module, "quantization_scheme", None), "weights", None)
            if qargs is None:
                continue
            resolved_args = qargs
            w = module.weight.detach().float()
            fq = fake_quantize(w, module.weight_scale, module.weight_zero_point, qargs)
            max_grid_err = max(max_grid_err, float((fq - w).abs().max()))
            max_distinct = max(max_distinct, max_distinct_per_group(fq, args.group_size))
            quantized[f"{name}.weight"] = fq
        src = model.state_dict()
        for key in state:
            state[key] = quantized.get(key, src[key]).detach().float()
    dense.load_state_dict(state, strict=True)
    if max_distinct > 2**args.bits:
        raise RuntimeError(f"{max_distinct} distinct values in a group: weights not fake-quantized")

    # Same window through both models: the dense copy must compute what llm-compressor's does.
    with torch.no_grad():
        x = ids[:1, :128]
        logit_diff = float((model(x).logits - dense(x).logits).abs().max())

    args.out.mkdir(parents=True, exist_ok=True)
    dense.save_pretrained(args.out)
    for f in args.model_dir.iterdir():
        if f.is_file() and TOKENIZER_FILES.match(f.name):
            shutil.copy2(f, args.out / f.name)
    config = json.loads((args.out / "config.json").read_text())
    assert "quantization_config" not in config, "dense output must not carry quantization_config"

    result = {
        "oneshot_wall_s": round(oneshot_s, 3),
        "total_wall_s": round(time.perf_counter() - t0, 3),
        "peak_rss_bytes": oneshot_peak_rss,
        "peak_rss_with_export_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "versions": {
            p: version(p) for p in ("llmcompressor", "compressed-tensors", "transformers", "torch")
        },
        "num_calibration_samples": n,
        "seq_len": seq_len,
        "scheme": {
            "name": f"w{args.bits}g{args.group_size}",
            "type": "int",
            "num_bits": args.bits,
            "symmetric": True,
            "strategy": "group",
            "group_size": args.group_size,
            "targets": ["Linear"],
            "ignore": ["lm_head"],
            "actorder": getattr(resolved_args, "actorder", None),
            "observer": getattr(resolved_args, "observer", None),
            "block_size": args.block_size,
            "dampening_frac": args.dampening_frac,
            "pipeline": "sequential",
        },
        "checks": {
            "quantized_linears": len(quantized),
            "max_abs_fakequant_minus_weight": max_grid_err,
            "max_distinct_values_per_row_group": max_distinct,
            "max_abs_logit_diff_llmc_vs_dense": logit_diff,
        },
        "model_dir": str(args.model_dir),
        "calib": str(args.calib),
    }
    (args.out / "llmc_result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
