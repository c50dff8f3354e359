"""Why RTN "Q5_K" is worse than RTN "Q4_K" on the built-in model (issue 16; BENCHMARKS.md,
section "GGML k-quants"). SmolLM2-135M's linear weights lie exactly on a Q4_1 grid (32-blocks,
fp16 scale d4 and min m4, 16 levels m4 + k·d4). Requantized min-max into Q5_1 (ggml's
reference rule, d5 = (max - min)/31 = 15·d4/31, m = min), level k lands at 31k/15 = 2k + k/15
steps: k ≤ 7 rounds down by k/15 steps, k ≥ 8 up by (15 - k)/15. The error is the same
sawtooth in every block: zero at the block's min and max, largest (7/15 of a step) on the two
central levels, where most weights are. Q5_0's grid is centred on zero, so the Q4_1 levels
fall on it at an arbitrary phase, whatever their level.

Parts (``--parts``, all by default):

- ``weights``: per tensor (layers 0, 15, 29; q_proj, gate_proj, down_proj): is it exactly on a
  Q4_1 grid (gguf's Q4_1 requantization reproduces it), its Q4_1 level histogram, and for
  lowbit's Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K and gguf-py's reference Q4_1/Q5_0/Q5_1/Q8_0: relative
  MSE, the error's gain along the weight and about the block midpoints, its mean over mean |w|,
  and whether lowbit's dequantized weight equals gguf-py's.
- ``activations``: per layer, Q5_0's and Q5_1's error weighted by the input channels' second
  moments on ``--act-windows`` windows, and the share of central-level weights in the 1% of
  input channels with the largest activations.
- ``kl``: KL divergence against the fp32 model with only some layers quantized (RTN, min-max):
  the fallback layers (q/k/v/o/gate/up) in Q5_0 or Q5_1, down_proj alone in Q4_K or Q5_K,
  v_proj alone in Q5_0 or Q5_1, and every layer in Q5_0 or Q5_1.
- ``signs``: every layer's Q5_0 or Q5_1 error with a random sign per weight (same magnitudes,
  no correlation with the weight).
- ``noised``: the model with Gaussian noise (σ = ``--noise`` × the block's Q5_1 step) added to
  every linear weight, so that no weight lies on the Q4_1 grid; KL against that noised fp32
  model of every layer in Q5_0 or Q5_1 and of down_proj alone in Q4_K or Q5_K.

Reduced protocol: WikiText-2 raw test, ctx 512, the first ``--eval-windows`` (default 10)
windows. Results: bench/results/q5k_anomaly.json (or ``--out``), with command, commit, machine.

Usage: .venv/bin/python bench/q5k_anomaly.py [--eval-windows 10] [--threads 1] [--noise 0.5]
[--act-windows 2] [--parts weights activations kl signs noised] [--out q5k_anomaly.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import RESULTS, write_result

SAMPLE = [
    f"model.layers.{i}.{m}.weight"
    for i in (0, 15, 29)
    for m in ("self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj")
]
FALLBACK = r"re:.*\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up)_proj)"
DOWN = r"re:.*\.mlp\.down_proj"
VPROJ = r"re:.*\.self_attn\.v_proj"
LOWBIT = {"q5_0": 32, "q5_1": 32, "q8_0": 32, "q4_k": 256, "q5_k": 256, "q6_k": 256}
GGUF = ("Q4_1", "Q5_0", "Q5_1", "Q8_0")


def error_stats(W, Wq) -> dict[str, float]:
    """Relative MSE of ``Wq`` against ``W``; the error's gain along ``W`` and along each
    32-block's deviation from its midpoint; its mean over mean |W|."""
    e, W = (Wq - W).double(), W.double()
    blocks = W.reshape(W.shape[0], -1, 32)
    mid = (blocks.amax(-1, keepdim=True) + blocks.amin(-1, keepdim=True)) / 2
    dev = (blocks - mid).reshape(W.shape)
    return {
        "rel_mse": float((e * e).sum() / (W * W).sum()),
        "gain": float((e * W).sum() / (W * W).sum()),
        "gain_about_mid": float((e * dev).sum() / (dev * dev).sum()),
        "mean_over_mean_abs": float(e.mean() / W.abs().mean()),
    }


def q4_1_levels(W) -> dict[str, float]:
    """Whether ``W`` is exactly its gguf Q4_1 requantization, and the share of Q5_1 codes that
    are not at twice the Q4_1 level (what an exact Q5_1 with step d4/2 would store)."""
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize

    Wn = W.numpy()
    exact = bool(np.array_equal(dequantize(quantize(Wn, T.Q4_1), T.Q4_1).reshape(Wn.shape), Wn))
    blocks = Wn.reshape(Wn.shape[0], -1, 32)
    lo, hi = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
    k = np.round((blocks - lo) / np.where(hi > lo, (hi - lo) / 15, 1))
    hist = np.bincount(k.astype(np.int64).ravel(), minlength=16)
    return {"q4_1_exact": exact, "level_histogram": hist.tolist()}


def weights_part(handle) -> dict[str, dict]:
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize
    from safetensors import safe_open

    from lowbit.formats import GGMLFormat, PerGroup
    from lowbit.formats.quantize import quantize_weight

    out: dict[str, dict] = {}
    with safe_open(str(handle.weight_files[0]), "pt") as f:
        for name in SAMPLE:
            W = f.get_tensor(name).float()
            row: dict[str, object] = {"shape": list(W.shape), **q4_1_levels(W)}
            refs = {}
            for t in GGUF:
                qt = GGMLQuantizationType[t]
                ref = dequantize(quantize(W.numpy(), qt), qt).reshape(W.shape)
                refs[t.lower()] = torch.from_numpy(np.ascontiguousarray(ref))
                row[f"gguf {t}"] = error_stats(W, refs[t.lower()])
            for kind, block in LOWBIT.items():
                if W.shape[1] % block:
                    continue
                Wq = quantize_weight(W, GGMLFormat(kind), PerGroup(block)).dequantize()
                stats: dict[str, object] = error_stats(W, Wq)
                if kind in refs:
                    stats["equals_gguf"] = bool(torch.equal(Wq, refs[kind]))
                    stats["weights_differing_from_gguf"] = int((Wq != refs[kind]).sum())
                row[f"lowbit {kind}"] = stats
            out[name] = row
            print(name, json.dumps(row), flush=True)
    return out


def activation_part(api, handle, windows) -> dict[str, object]:
    """Where each format's error meets the activations: per linear layer, the input second
    moments h_j = sum_t x_tj^2 on ``windows`` (fp32 model), the error weighted by them,
    sum_ij e_ij^2 h_j / sum_ij w_ij^2 h_j (the output error if input channels were
    uncorrelated), the plain relative MSE, and in the 1% of input channels with the largest h_j
    the share of weights on the two central Q4_1 levels (k = 7, 8) and the Q5_1/Q5_0 MSE ratio."""
    import torch

    from lowbit.formats import GGMLFormat, PerGroup
    from lowbit.formats.quantize import quantize_weight

    model = handle.load_model(api.runtime())
    moments: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            moments[name] = moments.get(name, 0) + (x * x).sum(0)

        return record

    linears = {n: m for n, m in model.named_modules() if n.endswith("_proj")}
    for name, module in linears.items():
        module.register_forward_hook(hook(name))
    with torch.no_grad():
        model(windows.ids)
    layers: dict[str, dict] = {}
    for name, module in linears.items():
        W, h = module.weight.detach().float(), moments[name].float()
        blocks = W.reshape(W.shape[0], -1, 32)
        lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
        k = torch.round((blocks - lo) / torch.where(hi > lo, (hi - lo) / 15, 1)).reshape(W.shape)
        top = h.argsort(descending=True)[: max(1, h.numel() // 100)]
        row: dict[str, float] = {
            "central_share_top": float(((k[:, top] - 7.5).abs() < 1).float().mean())
        }
        row["central_share_all"] = float(((k - 7.5).abs() < 1).float().mean())
        sq = {}
        for kind in ("q5_0", "q5_1"):
            sq[kind] = (quantize_weight(W, GGMLFormat(kind), PerGroup(32)).dequantize() - W) ** 2
            row[f"{kind} weighted"] = float((sq[kind] * h).sum() / ((W * W) * h).sum())
            row[f"{kind} rel_mse"] = float(sq[kind].sum() / (W * W).sum())
        row["mse_ratio_top"] = float(sq["q5_1"][:, top].mean() / sq["q5_0"][:, top].mean())
        row["mse_ratio_all"] = float(sq["q5_1"].mean() / sq["q5_0"].mean())
        layers[name] = row
    by_type: dict[str, dict] = {}
    for kind in sorted({n.split(".")[-1] for n in layers}):
        rows = [r for n, r in layers.items() if n.endswith(kind)]
        by_type[kind] = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
    print(json.dumps(by_type), flush=True)
    return {"tokens": int(windows.ids.numel()), "mean_by_type": by_type, "layers": layers}


def plans() -> dict[str, object]:
    from lowbit.algorithms import RTNConfig
    from lowbit.formats import GGMLFormat, PerGroup
    from lowbit.plan import LayerSpec, Plan, Rule

    def spec(kind: str) -> LayerSpec:
        block = 256 if kind.endswith("_k") else 32
        return LayerSpec(GGMLFormat(kind), PerGroup(block), RTNConfig())

    return {
        "all Q4_K (fallback Q5_0)": Plan(spec("q4_k")),
        "all Q5_K (fallback Q5_1)": Plan(spec("q5_k")),
        "fallback layers Q5_0, down_proj fp32": Plan(None, (Rule(FALLBACK, spec("q5_0")),)),
        "fallback layers Q5_1, down_proj fp32": Plan(None, (Rule(FALLBACK, spec("q5_1")),)),
        "down_proj Q4_K, others fp32": Plan(None, (Rule(DOWN, spec("q4_k")),)),
        "down_proj Q5_K, others fp32": Plan(None, (Rule(DOWN, spec("q5_k")),)),
        "v_proj Q5_0, others fp32": Plan(None, (Rule(VPROJ, spec("q5_0")),)),
        "v_proj Q5_1, others fp32": Plan(None, (Rule(VPROJ, spec("q5_1")),)),
        "all Q5_0": Plan(spec("q5_0")),
        "all Q5_1": Plan(spec("q5_1")),
    }


def kl_rows(api, handle, plan_map: dict[str, object], windows, rt) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    reference = api.model_view(handle)
    for name, plan in plan_map.items():
        t0 = time.perf_counter()
        qm = api.quantize(handle, plan, None, rt=rt)
        res = api.evaluate(reference, {name: api.quantized_view(qm, name)}, windows, rt)
        q = res[name]
        rows[name] = {
            "bits_per_weight_linear": api.footprint(handle, qm).bits_per_weight_linear,
            "kl_mean": q.kl["mean"],
            "kl_p99": q.kl["p99"],
            "top1_agreement": q.top1_agreement,
            "perplexity": q.perplexity,
            "reference_perplexity": res["reference"].perplexity,
            "seconds": time.perf_counter() - t0,
        }
        print(name, json.dumps(rows[name]), flush=True)
    return rows


def perturbed_copy(handle, where: Path, change) -> Path:
    """The model directory with every linear weight W replaced by ``change(W)`` (fp32)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(handle.path, where)
    tensors = load_file(str(where / "model.safetensors"))
    for name, W in tensors.items():
        if name.endswith("_proj.weight"):
            tensors[name] = change(W.float()).to(W.dtype)
    save_file(tensors, str(where / "model.safetensors"), metadata={"format": "pt"})
    return where


def noise(scale: float, seed: int = 0):
    """W + N(0, (scale·step)²), step its 32-block's Q5_1 step (max - min)/31."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def change(W):
        blocks = W.reshape(W.shape[0], -1, 32)
        step = (blocks.amax(-1, keepdim=True) - blocks.amin(-1, keepdim=True)) / 31
        z = torch.randn(blocks.shape, generator=gen)
        return (blocks + scale * step * z).reshape(W.shape)

    return change


def random_signs(kind: str, seed: int = 0):
    """W + s·(Q(W) - W): ``kind``'s RTN error per weight with a random sign s = ±1, so the same
    error magnitudes (the same MSE) without their correlation with the weight."""
    import torch

    from lowbit.formats import GGMLFormat, PerGroup
    from lowbit.formats.quantize import quantize_weight

    gen = torch.Generator().manual_seed(seed)

    def change(W):
        e = quantize_weight(W, GGMLFormat(kind), PerGroup(32)).dequantize() - W
        s = torch.randint(0, 2, W.shape, generator=gen).float() * 2 - 1
        return W + s * e

    return change


def view_rows(api, reference, views: dict[str, object], windows, rt) -> dict[str, dict]:
    """KL of whole models (e.g. perturbed copies) against ``reference``."""
    res = api.evaluate(reference, views, windows, rt)
    rows = {
        name: {
            "kl_mean": res[name].kl["mean"],
            "kl_p99": res[name].kl["p99"],
            "top1_agreement": res[name].top1_agreement,
            "perplexity": res[name].perplexity,
            "reference_perplexity": res["reference"].perplexity,
        }
        for name in views
    }
    print(json.dumps(rows), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-windows", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--act-windows", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument(
        "--parts", nargs="*", default=["weights", "activations", "kl", "signs", "noised"]
    )
    parser.add_argument("--only", nargs="*", default=None, help="only KL rows starting so")
    parser.add_argument("--out", default="q5k_anomaly.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from lowbit import api
    from lowbit.evaluation.text import data_dir

    handle = api.load("smollm2-135m")
    test = api.TextConfig(
        str(data_dir() / "wikitext-2-raw" / "wiki.test.raw"), 512, args.eval_windows
    )
    windows = api.text_windows(handle, test, calibration=False)
    rt = api.runtime()
    record: dict[str, object] = {
        "protocol": f"WikiText-2 raw test, ctx 512, first {args.eval_windows} windows; RTN min-max",
    }
    only = tuple(args.only or ())
    selected = {k: p for k, p in plans().items() if not only or k.startswith(only)}
    if "weights" in args.parts:
        record["weights"] = weights_part(handle)
        write_result(RESULTS / args.out, record)
    if "activations" in args.parts:
        cut = api.Windows(windows.ids[: args.act_windows], windows.info, windows.bos)
        record["activations"] = activation_part(api, handle, cut)
        write_result(RESULTS / args.out, record)
    if "kl" in args.parts:
        record["kl"] = kl_rows(api, handle, selected, windows, rt)
        write_result(RESULTS / args.out, record)
    if "signs" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            views = {
                f"all {k.upper()} error, random signs": api.model_view(
                    api.load(str(perturbed_copy(handle, Path(tmp) / k, random_signs(k))))
                )
                for k in ("q5_0", "q5_1")
            }
            record["random_signs"] = view_rows(api, api.model_view(handle), views, windows, rt)
        write_result(RESULTS / args.out, record)
    if "noised" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            noised = api.load(str(perturbed_copy(handle, Path(tmp) / "n", noise(args.noise))))
            wanted = ("all Q5_0", "all Q5_1", "down_proj Q4_K", "down_proj Q5_K")
            record["noised"] = {
                "noise": f"N(0, ({args.noise} x block Q5_1 step)^2) on every linear weight",
                "weights": weights_part(noised) if "weights" in args.parts else None,
                "kl": kl_rows(
                    api,
                    noised,
                    {k: p for k, p in plans().items() if k.startswith(wanted)},
                    windows,
                    rt,
                ),
            }
        write_result(RESULTS / args.out, record)


if __name__ == "__main__":
    main()
