"""The sensitivity probe's KL scoring, before and after (issue 16's sensitivity cost), on the
built-in model and the probe windows of ``bench/allocation.py`` (the first 2 of 32 × 512
calibration windows of wiki.valid.tokens, seed 0, cut to 192 tokens).

Each candidate window's logits (V = 49,152) are scored two ways, interleaved, median of 9 runs
each after one to warm up (``common.median_ms``), at the machine's thread count:
- ``term_by_term``: what the probe did before: log-softmax, then the evaluation's
  ``score_cached`` (NLL, KL term by term, top-1 agreement, Δp; the probe used the KL only);
- ``reference_kl``: :class:`lowbit.sensitivity.measured.ReferenceKL`: p = exp(log p) once per
  reference window, then the terms formed in place in each candidate's log-probabilities.
The head's matrix product is timed for 768 tokens in calls of one 192-token window and in one
call (``HEAD_ROWS``). Both scorers are compared token by token (the same float32 operations in
the same order: identical), and with the KL taken in float64 from both models' logits (no cache,
float64 normalisation on both sides: the error of the cache's encoding and of float32
normalisation, the same for both), on real candidates: RTN INT3 and INT8 g64 of
``model.layers.0.mlp.up_proj`` (a large and a tiny KL).

    .venv/bin/python bench/probe_scoring.py     # writes bench/results/probe_scoring.json
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, median_ms, write_result

from lowbit.algorithms import rtn_quantize
from lowbit.evaluation import text as T
from lowbit.evaluation.metrics import Accumulator
from lowbit.evaluation.refcache import score_cached
from lowbit.formats import IntFormat, PerGroup
from lowbit.models.sources import resolve_model
from lowbit.runtime import RuntimeConfig, resolve_runtime
from lowbit.sensitivity.measured import ReferenceKL, reference_windows

LAYER = "model.layers.0.mlp.up_proj"


def _old(logits: torch.Tensor, ref) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    acc = Accumulator()
    score_cached(logp, ref, ref.target, acc)
    return acc.kl[0]


def _candidate_logits(model, ids: torch.Tensor, bits: int) -> torch.Tensor:
    layer = model.get_submodule(LAYER)
    original = layer.weight.data.clone()
    q = rtn_quantize(original, IntFormat(bits), PerGroup(64)).dequantize()
    layer.weight.data = q
    try:
        with torch.inference_mode():
            return model(input_ids=ids, use_cache=False).logits[:, :-1]
    finally:
        layer.weight.data = original


def main() -> None:
    rt = resolve_runtime(RuntimeConfig(dtype="float32"))
    handle = resolve_model("smollm2-135m")
    valid = T.load_text(T.FileText(T.data_dir() / "wikitext-2" / "wiki.valid.tokens"))
    ids = T.tokenize(handle.load_tokenizer(), valid)
    probe = T.calibration_windows(ids, 512, 32, 0, "wiki.valid.tokens")[:2, :192]
    reference, _ = reference_windows(handle, probe, rt)
    model = handle.load_model(rt)
    prepared = [ReferenceKL(ref, probe[r, 1:]) for r, ref in enumerate(reference)]
    with torch.inference_mode():
        ref_logits = model(input_ids=probe, use_cache=False).logits[:, :-1]
    record: dict[str, object] = {"threads": torch.get_num_threads(), "windows": 2, "ctx": 192}
    for bits in (3, 8):
        logits = _candidate_logits(model, probe, bits)
        rows = {"term_by_term_ms": [], "reference_kl_ms": [], "err_old": [], "err_new": []}
        for r, ref in enumerate(reference):
            x = logits[r]
            old, new = _old(x, ref).double(), prepared[r].kl(x).double()
            rows.setdefault("identical", []).append(torch.equal(old, new))
            p64 = torch.log_softmax(ref_logits[r].double(), -1)
            exact = (p64.exp() * (p64 - torch.log_softmax(x.double(), -1))).sum(-1)
            rows["err_old"].append(float((old - exact).abs().max()))
            rows["err_new"].append(float((new - exact).abs().max()))
            rows.setdefault("kl_float64", []).append(float(exact.mean()))
            rows.setdefault("kl_old", []).append(float(old.mean()))
            rows.setdefault("kl_new", []).append(float(new.mean()))
            for _ in range(2):  # interleaved: each form timed twice per window
                rows["term_by_term_ms"].append(median_ms(lambda x=x, ref=ref: _old(x, ref), 9))
                rows["reference_kl_ms"].append(median_ms(lambda x=x, r=r: prepared[r].kl(x), 9))
        old_ms = statistics.median(rows["term_by_term_ms"])
        new_ms = statistics.median(rows["reference_kl_ms"])
        record[f"int{bits}_g64"] = {
            "term_by_term_ms_per_window": old_ms,
            "reference_kl_ms_per_window": new_ms,
            "speedup": old_ms / new_ms,
            "identical_per_token": all(rows["identical"]),
            "max_abs_error_per_token_vs_float64": {
                "term_by_term": max(rows["err_old"]),
                "reference_kl": max(rows["err_new"]),
            },
            "mean_kl": {
                "float64": statistics.fmean(rows["kl_float64"]),
                "term_by_term": statistics.fmean(rows["kl_old"]),
                "reference_kl": statistics.fmean(rows["kl_new"]),
            },
        }
        print(f"INT{bits} g64 {LAYER}: {record[f'int{bits}_g64']}")
    record["head"] = _head(model, reference)
    print(f"head: {record['head']}")
    write_result(RESULTS / "probe_scoring.json", record)


def _head(model, reference) -> dict[str, float]:
    """The model's head on 768 tokens of hidden states: 4 calls of one 192-token window
    against one call of 4 windows (``measured.HEAD_ROWS``), interleaved: the median of 3
    medians of 3 runs each."""
    h = torch.randn(
        4, 192, int(model.config.hidden_size), generator=torch.Generator().manual_seed(0)
    )
    head = model.get_output_embeddings()

    def per_window() -> None:
        for k in range(4):
            head(h[k : k + 1])

    with torch.inference_mode():
        one, four = [], []
        for _ in range(3):
            one.append(median_ms(per_window, 3))
            four.append(median_ms(lambda: head(h), 3))
    a, b = statistics.median(one), statistics.median(four)
    return {"ms_768_tokens_192_per_call": a, "ms_768_tokens_768_per_call": b, "ratio": a / b}


if __name__ == "__main__":
    main()
