"""compressed-tensors export of the built-in model in the formats beyond integers (issue 16
part 5): FP8 E4M3 weights per channel and per group of 64 columns (W8A16;
SmolLM2's 576-wide inputs take no 128), W8A8 with FP8 or
INT8 activations (dynamic per token, or static per tensor calibrated on wiki.valid.tokens),
NVFP4 (one global scale per fused q/k/v and gate/up group) and MXFP4, with the integer W4 g64
for reference. Every layer is quantized by round to nearest.

For each: the export's size (all files), the size lowbit predicts, the export's own read-back
check (each layer decompressed by compressed-tensors against the evaluated weight, largest
absolute difference), and an independent re-read of the written directory with lowbit's
compressed-tensors source (the library's config parser and decompressors): the largest weight
difference (absolute and relative to the weight's absmax) and the largest logit difference
against the evaluated (fake-quantized) model on 2 windows of 512 tokens of WikiText-2 raw test.

Usage: .venv/bin/python bench/ct_formats.py [--calib-windows 16] [--cases 0,3] [--out NAME]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import write_result

from lowbit import api
from lowbit.algorithms import RTNConfig
from lowbit.algorithms.activation_specs import ActivationSpec
from lowbit.formats import FORMATS, IntFormat, PerChannel, PerGroup
from lowbit.models.compressed_source import load_compressed_tensors
from lowbit.models.nvfp4_fused import share_fused_nvfp4_scales
from lowbit.plan import LayerSpec, Plan

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "ct_formats.json"
FP8 = FORMATS.get("fp8_e4m3")()


def _w(fmt, gran) -> LayerSpec:
    return LayerSpec(fmt, gran, RTNConfig())


CASES: dict[str, Plan] = {
    "int4 g64 (W4A16, reference)": Plan(_w(IntFormat(4), PerGroup(64))),
    "fp8 e4m3 per-channel (W8A16)": Plan(_w(FP8, PerChannel())),
    "fp8 e4m3 group 64 (W8A16)": Plan(_w(FP8, PerGroup(64))),
    "fp8 W8A8 dynamic per-token": Plan(
        _w(FP8, PerChannel()), activations=ActivationSpec(FP8, "per_token", True)
    ),
    "fp8 W8A8 static per-tensor": Plan(
        _w(FP8, PerChannel()), activations=ActivationSpec(FP8, "per_tensor", False)
    ),
    "int8 W8A8 dynamic per-token": Plan(
        _w(IntFormat(8), PerChannel()), activations=ActivationSpec(IntFormat(8), "per_token", True)
    ),
    "int8 W8A8 static per-tensor": Plan(
        _w(IntFormat(8), PerChannel()),
        activations=ActivationSpec(IntFormat(8), "per_tensor", False),
    ),
    "nvfp4 (shared fused global scale)": Plan(_w(FORMATS.get("nvfp4")(), PerGroup(16))),
    "mxfp4": Plan(_w(FORMATS.get("mxfp4")(), PerGroup(32))),
}


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def one(handle, plan: Plan, calib, ids: torch.Tensor, work: Path) -> dict:
    t0 = time.perf_counter()
    qm = api.quantize(handle, plan, calib if plan.needs_calibration else None)
    if "nvfp4" in {qw.fmt.name for qw in qm.weights.values()}:
        qm = share_fused_nvfp4_scales(qm)
    quant_s = time.perf_counter() - t0
    model = api.fake_quant_model(handle, qm)
    ref = _logits(model, ids)
    out = work / "ct"
    rep = api.export(qm, model, "compressed-tensors", out, overwrite=True)
    raw = json.loads((out / "config.json").read_text())["quantization_config"]
    loaded = load_compressed_tensors(out)
    abs_err, rel_err = 0.0, 0.0
    for name, qw in qm.weights.items():
        want = qw.dequantize()
        diff = float((loaded.get_submodule(name).weight.detach() - want).abs().max())
        abs_err = max(abs_err, diff)
        rel_err = max(rel_err, diff / float(want.abs().max()))
    logit_err = float((_logits(loaded, ids) - ref).abs().max())
    result = {
        "format": raw["format"],
        "quantize_s": round(quant_s, 2),
        "export_s": round(rep.seconds, 2),
        "size_bytes": rep.size_bytes,
        "weights_bytes": rep.files.get("model.safetensors"),
        "predicted_bytes": rep.predicted_bytes,
        "export_read_back_max_abs": rep.max_weight_error,
        "reread_weight_max_abs": abs_err,
        "reread_weight_max_rel_to_absmax": rel_err,
        "reread_logits_max_abs": logit_err,
    }
    shutil.rmtree(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calib-windows", type=int, default=16)
    parser.add_argument(
        "--cases", default="", help="Comma-separated case numbers (0-based; default: all)."
    )
    parser.add_argument("--out", default="ct_formats", help="Result name under bench/results.")
    args = parser.parse_args()
    names = list(CASES)
    chosen = [names[int(i)] for i in args.cases.split(",")] if args.cases else names
    out = OUT.with_name(f"{args.out}.json")
    from lowbit.evaluation.text import data_dir

    data = data_dir()
    handle = api.load("smollm2-135m")
    valid = str(data / "wikitext-2" / "wiki.valid.tokens")
    test = str(data / "wikitext-2-raw" / "wiki.test.raw")
    calib = api.text_windows(
        handle, api.TextConfig(valid, 512, args.calib_windows, 0), calibration=True
    )
    ids = api.text_windows(handle, api.TextConfig(test, 512, 2), calibration=False).ids
    record: dict = {"protocol": {"calib_windows": args.calib_windows, "logit_windows": 2}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            record[name] = one(handle, CASES[name], calib, ids, Path(tmp))
            print(name, json.dumps(record[name]), flush=True)
            write_result(out, record)  # after each format: a partial run keeps its results


if __name__ == "__main__":
    main()
