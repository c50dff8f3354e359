"""The sensitivity probes of ``lowbit sensitivity --ray`` as trials of a sweep: each trial
measures the table's entries of a shard of the model's blocks (a partial table, written beside
the store); the workflow merges the shards into one table. A shard is recorded in the results
store like any trial, so an interrupted run resumes shard by shard."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lowbit import api
from lowbit.plan import LayerSpec
from lowbit.runtime import using_cpu_threads
from lowbit.sweep.grid import TrialConfig


def probe_trial(digest: str, config: TrialConfig, artefacts: Path) -> dict[str, Any]:
    """Measure one shard (``config["probe"]["blocks"]``) of a sensitivity table with
    ``config["threads"]`` torch threads (recorded in the provenance's runtime); the partial
    table is written to ``artefacts/HASH.json``."""
    with using_cpu_threads(config["threads"]):  # the driver's (the figures depend on it)
        return _probe_trial(digest, config, artefacts)


def _probe_trial(digest: str, config: TrialConfig, artefacts: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    rt = api.runtime(api.RuntimeConfig(**config["runtime"]))
    handle = api.load(config["model"])
    menu = tuple(LayerSpec.from_dict(s) for s in config["menu"])
    probe = api.ProbeConfig(**{**config["probe"], "blocks": tuple(config["probe"]["blocks"])})
    calib = api.TextConfig(**config["calibration"])
    windows = api.text_windows(handle, calib, calibration=True, held_out=probe.held_out_windows)
    table = api.sensitivity(handle, menu, windows, probe, rt=rt)
    path = artefacts / f"{digest}.json"
    api.write_result(path, table.to_dict(), overwrite=True)
    prov = api.provenance(
        "sensitivity shard", handle, config, {"calibration": windows.info}, table.timings, rt
    )
    return {
        "metrics": {"entries": len(table.entries), "block_loads": table.timings["block_loads"]},
        "artefacts": {"result": str(path)},
        "provenance": {k: prov[k] for k in ("lowbit_version", "model", "runtime", "machine",
                                            "libraries", "timings_s")},
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip
