"""One trial of a sweep: quantize a model under a plan and evaluate it, through lowbit's API.

:func:`run_trial` is what a Ray task (or the in-process executor) runs; it returns plain JSON
(metrics, artefact paths, provenance, seconds) and writes the trial's full result beside the
store (``trials/HASH.json``, atomically). The reference's log-probabilities come from the
shared reference cache, so each (model, text) pair is computed once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lowbit import api
from lowbit.plan import Plan
from lowbit.sweep.grid import TrialConfig


def run_trial(digest: str, config: TrialConfig, artefacts: Path) -> dict[str, Any]:
    """Quantize and evaluate one trial; ``{"metrics", "artefacts", "provenance", "seconds"}``."""
    t0 = time.perf_counter()
    rt = api.runtime(api.RuntimeConfig(**config["runtime"]))
    handle = api.load(config["model"])
    plan = Plan.from_dict(config["plan"])
    calib = None
    if config["calibration"] is not None:
        calib = api.text_windows(handle, api.TextConfig(**config["calibration"]), calibration=True)
    windows = api.text_windows(handle, api.TextConfig(**config["eval"]), calibration=False)
    qm = api.quantize(handle, plan, calib, rt=rt)
    fp = api.footprint(handle, qm)
    res = api.evaluate(api.model_view(handle), {"trial": api.quantized_view(qm)}, windows, rt)
    trial, ref = res["trial"], res["reference"]
    metrics = {
        "bits_per_weight_linear": fp.bits_per_weight_linear,
        "bits_per_weight_model": fp.bits_per_weight_model,
        "size_bytes": fp.size_bytes,
        "perplexity": trial.perplexity,
        "reference_perplexity": ref.perplexity,
        "kl_mean": trial.kl["mean"] if trial.kl else None,
        "top1_agreement": trial.top1_agreement,
    }
    timings = {**qm.timings, "eval_s": trial.seconds, "trial_s": time.perf_counter() - t0}
    data = {"calibration": calib.info if calib else None, "eval": windows.info}
    prov = api.provenance("sweep trial", handle, config, data, timings, rt)
    path = artefacts / f"{digest}.json"
    api.write_result(path, {**prov, "hash": digest, "metrics": metrics}, overwrite=True)
    return {
        "metrics": metrics,
        "artefacts": {"result": str(path)},
        "provenance": {k: prov[k] for k in ("lowbit_version", "model", "runtime", "machine",
                                            "libraries", "timings_s")},
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip
