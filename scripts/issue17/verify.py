"""Issue 17 check on the built-in model: blocks 28,29, RTN and GPTQ INT4 g64, calib 4 windows:
in this process (2 threads) vs the same shard as a Ray trial (probe_trial) at 2 and 1 threads."""

import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from lowbit import api
from lowbit.sensitivity import SensitivityTable
from lowbit.sensitivity.probe import ProbeConfig
from lowbit.sweep.executors import RayExecutor
from lowbit.sweep.points import measure
from lowbit.sweep.probes import probe_trial
from lowbit.workflows.points import runtime_json, text_json
from lowbit.workflows.spine import DEFAULT_EXECUTION

blocks = [28, 29]
calib = api.TextConfig(
    str(Path(os.environ["LOWBIT_DATA_DIR"]) / "wikitext-2/wiki.valid.tokens"), 512, 4
)
menu = tuple(api.spec_from_options(4, 64, True, a) for a in ("rtn", "gptq"))
probe = ProbeConfig(blocks=tuple(blocks))
torch.set_num_threads(2)
handle = api.load("smollm2-135m")
here = api.sensitivity(
    handle,
    menu,
    api.text_windows(handle, calib, calibration=True),
    probe,
    rt=api.runtime(DEFAULT_EXECUTION.runtime),
)


def cfg(t):
    return {
        "kind": "sensitivity shard",
        "model": "smollm2-135m",
        "menu": [s.to_dict() for s in menu],
        "calibration": text_json(calib),
        "runtime": runtime_json(DEFAULT_EXECUTION),
        "threads": t,
        "probe": {**asdict(probe), "blocks": blocks},
    }


tmp = Path(tempfile.mkdtemp())
out = measure([("t2", cfg(2)), ("t1", cfg(1))], tmp / "s.sqlite", RayExecutor(probe_trial, None, 1))
for name, data in out.items():
    t = SensitivityTable.from_dict(data)
    n = same = 0
    worst = {}
    for k, e in here.entries.items():
        r = t.entries[k]
        n += 1
        same += (r.kl, r.hessian, r.fisher) == (e.kl, e.hessian, e.fisher)
        for m in ("kl", "hessian", "fisher"):
            a, b = getattr(r, m), getattr(e, m)
            worst[(m, menu[k[1]].describe())] = max(
                worst.get((m, menu[k[1]].describe()), 0), abs(a - b) / abs(b)
            )
    print(
        f"Ray threads={name}: {same}/{n} entries bit-identical to in-process (2 threads); "
        "max rel diff",
        {f"{m} {s}": f"{v:.3g}" for (m, s), v in worst.items()},
    )
