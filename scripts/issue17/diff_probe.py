"""Issue 17 measurement: one shard of the built-in model's sensitivity (RTN INT4 g64, calib 4
windows) with its intermediates (recorded calibration inputs, Hessians, Fisher, entries), in
this process at T threads or inside a Ray task; saved to a .pt file for comparison."""

import os
import sys
import time
from pathlib import Path

import torch


def run_shard(blocks, threads, out):
    import lowbit.sensitivity.probe as P
    from lowbit import api
    from lowbit.sensitivity.probe import ProbeConfig

    if threads is not None:
        torch.set_num_threads(threads)
    got = {
        "threads": torch.get_num_threads(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "calib_in": {},
        "probe_in": {},
        "hess": {},
        "fisher": {},
    }
    rec0, hes0, step0 = P.record_inputs, P.block_hessians, P.BlockwiseFisher.step

    def rec(store, streams, todo):
        r = rec0(store, streams, todo)
        for i, a in r.calibration.items():
            got["calib_in"][i] = torch.cat([c.hidden for c in a.chunks]).clone()
        for i, a in r.probe.items():
            got["probe_in"][i] = torch.cat([c.hidden for c in a.chunks]).clone()
        got["fisher_in_top"] = {
            i: torch.cat([c.hidden for c in a.chunks]).clone() for i, a in r.fisher.items()
        }
        return r

    def hes(block, inputs, groups, device):
        h = hes0(block, inputs, groups, device)
        got["hess"][len(got["hess"])] = {k: v.clone() for k, v in h.items()}
        return h

    def step(self, i, block, members):
        f = step0(self, i, block, members)
        got["fisher"][i] = {k: v.clone() for k, v in f.items()}
        return f

    P.record_inputs, P.block_hessians, P.BlockwiseFisher.step = rec, hes, step
    data = Path(os.environ["LOWBIT_DATA_DIR"])
    calib = api.TextConfig(str(data / "wikitext-2" / "wiki.valid.tokens"), 512, 4)
    menu = (api.spec_from_options(4, 64, True, "rtn"),)
    rt = api.runtime(api.RuntimeConfig())
    handle = api.load("smollm2-135m")
    windows = api.text_windows(handle, calib, calibration=True)
    t0 = time.perf_counter()
    table = api.sensitivity(handle, menu, windows, ProbeConfig(blocks=tuple(blocks)), rt=rt)
    got["seconds"] = time.perf_counter() - t0
    got["entries"] = {k: (e.kl, e.hessian, e.fisher) for k, e in table.entries.items()}
    torch.save(got, out)
    return got["threads"], got["omp"], got["seconds"]


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    blocks = [int(b) for b in sys.argv[3].split(",")]
    if mode == "ray":
        import ray

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        f = ray.remote(num_cpus=1)(run_shard)
        print(ray.get(f.remote(blocks, None, out)))
        ray.shutdown()
    else:
        print(run_shard(blocks, int(mode), out))
