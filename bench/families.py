"""Every family lowbit claims, on a tiny random model of each (built offline from transformers'
own config classes, as the tests do) calibrated and evaluated on real text (the built-in
Python documentation, tokenized by a byte-level BPE trained on its calibration half):

- which stages work (``lowbit inspect``'s stage support, from discovery);
- the time to quantize (RTN W4 g16, GPTQ W4 g16) and evaluate on this machine;
- KL divergence to the original of GPTQ against RTN (GPTQ lower in every family);
- for the mixtures of experts: tokens routed to each expert during calibration, how many
  experts would have been left uncalibrated without the calibration policy (no routed token
  in any block), no NaN anywhere, router weights bit-identical before and after.

    python bench/families.py            # writes bench/results/families.json
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_result  # noqa: E402
from tests.helpers.families import FAMILIES, MOE  # noqa: E402
from tests.helpers.tiny import make_tiny_model  # noqa: E402

from lowbit import api  # noqa: E402
from lowbit.algorithms import GPTQConfig, RTNConfig  # noqa: E402
from lowbit.api.inspect import stage_support  # noqa: E402
from lowbit.formats import IntFormat, PerGroup  # noqa: E402
from lowbit.plan import LayerSpec, uniform_plan  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CTX, CALIB, EVAL = 64, 32, 16


def one_family(root: Path, family: str) -> dict[str, Any]:
    handle = api.load(str(make_tiny_model(root, family)))
    rt = api.runtime()
    calib = api.text_windows(
        handle, api.TextConfig("builtin:python-docs", CTX, CALIB, 0), calibration=True
    )
    windows = api.text_windows(
        handle, api.TextConfig("builtin:python-docs", CTX, EVAL, 0), calibration=False
    )
    routers = _routers(handle)
    row: dict[str, Any] = {"stages": stage_support(handle.config, handle.arch)}
    views = {}
    for name, algo in (("rtn", RTNConfig()), ("gptq", GPTQConfig())):
        t0 = time.perf_counter()
        plan = uniform_plan(LayerSpec(IntFormat(4), PerGroup(16), algo))
        qm = api.quantize(handle, plan, calib if algo.needs_calibration else None, rt=rt)
        row[f"{name}_quantize_s"] = round(time.perf_counter() - t0, 3)
        row[f"{name}_finite"] = all(
            bool(torch.isfinite(qm.weights[n].dequantize()).all()) for n in qm.weights
        )
        views[name] = api.quantized_view(qm, name)
        if name == "gptq" and qm.execution.get("experts"):
            row["experts"] = _expert_figures(qm.execution["experts"])
            row["routers_identical"] = _routers_identical(routers, handle, qm)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = api.evaluate(
            api.model_view(handle), views, windows, rt, cache=Path(tmp) / "ref.lbref"
        )
    row["eval_s"] = round(time.perf_counter() - t0, 3)
    for name in views:
        kl = results[name].kl
        assert kl is not None
        row[f"{name}_kl"] = kl["mean"]
    row["gptq_below_rtn"] = row["gptq_kl"] < row["rtn_kl"]
    return row


def _routers(handle: Any) -> dict[str, torch.Tensor]:
    model = handle.load_model()
    names = set(handle.arch.routers())
    return {
        n: p.detach().clone() for n, p in model.named_parameters() if n.rsplit(".", 1)[0] in names
    }


def _routers_identical(before: dict[str, torch.Tensor], handle: Any, qm: Any) -> bool:
    from lowbit.models.fakequant import fake_quant

    after = dict(fake_quant(handle.load_model(), qm).named_parameters())
    return bool(before) and all(torch.equal(after[n], p) for n, p in before.items())


def _expert_figures(experts: dict[str, Any]) -> dict[str, Any]:
    counts = {name: e["routed_tokens"] for name, e in experts.items()}
    return {
        "routed_tokens_per_block": counts,
        "experts_per_block": len(next(iter(counts.values()))),
        "uncalibrated_without_policy": sum(e["unrouted"] for e in experts.values()),
        "min_routed": min(min(c) for c in counts.values()),
        "max_routed": max(max(c) for c in counts.values()),
    }


def sparse_routing(root: Path) -> dict[str, Any]:
    """A tiny Qwen3-MoE with Qwen3-30B-A3B's expert count (128, top 8) calibrated on few real
    tokens (2 windows of 32): how many experts the router leaves without a token (each would
    have no Hessian without the policy) or under 16 tokens (where ``routed`` falls back)."""
    from tests.helpers.families import family_config
    from tests.helpers.tiny import save_tiny_model

    config = family_config("qwen3_moe")
    config.num_experts, config.num_experts_per_tok = 128, 8
    handle = api.load(str(save_tiny_model(root, "qwen3_moe_128", config)))
    calib = api.text_windows(
        handle, api.TextConfig("builtin:python-docs", 32, 2, 0), calibration=True
    )
    plan = uniform_plan(LayerSpec(IntFormat(4), PerGroup(16), GPTQConfig()))
    qm = api.quantize(handle, plan, calib)
    experts = qm.execution["experts"]
    counts = [c for e in experts.values() for c in e["routed_tokens"]]
    return {
        "experts": 128,
        "top_k": 8,
        "calibration_tokens": int(calib.ids.numel()),
        "expert_blocks": len(counts),
        "no_routed_token": sum(c == 0 for c in counts),
        "under_16_tokens": sum(c < 16 for c in counts),
        "all_quantized_finite": len(qm.weights) == len(handle.arch.layer_names())
        and all(bool(torch.isfinite(qm.weights[n].dequantize()).all()) for n in qm.weights),
    }


def main() -> None:
    torch.manual_seed(0)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            t0 = time.perf_counter()
            rows[family] = one_family(Path(tmp), family)
            rows[family]["total_s"] = round(time.perf_counter() - t0, 3)
            r = rows[family]
            print(
                f"{family:12s} rtn {r['rtn_kl']:.5f} gptq {r['gptq_kl']:.5f} "
                f"quantize {r['rtn_quantize_s']:.1f}/{r['gptq_quantize_s']:.1f} s "
                f"eval {r['eval_s']:.1f} s" + (" experts" if family in MOE else ""),
                flush=True,
            )
        sparse = sparse_routing(Path(tmp))
        print(f"sparse routing: {sparse}", flush=True)
    write_result(
        RESULTS / "families.json",
        {"protocol": {"ctx": CTX, "calibration_windows": CALIB, "eval_windows": EVAL,
                      "text": "builtin:python-docs", "plan": "W4 g16 symmetric"},
         "families": rows, "sparse_routing": sparse},
    )  # fmt: skip


if __name__ == "__main__":
    main()
