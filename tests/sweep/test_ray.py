"""A sweep of tiny RTN trials end to end through a local Ray (one Ray session for the module),
then ``lowbit results``; an unreachable ``--address`` is refused fast."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import yaml

from lowbit.errors import ConfigError
from lowbit.sweep.driver import run_sweep
from lowbit.sweep.executors import LocalExecutor, RayExecutor, check_reachable
from lowbit.sweep.spec import load_sweep
from lowbit.sweep.store import open_store
from lowbit.sweep.trial import run_trial
from tests.sweep.conftest import write_sweep

ray = pytest.importorskip("ray", reason="Ray is the [sweep] extra (installed with [dev])")


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_sweep_equals_the_same_trials_in_one_process(ray_session, tmp_path, wide_llama):
    """RTN and GPTQ trials on Ray (2 workers) equal the same trials in this process, metric for
    metric, on a model wide enough for torch's thread count to change GPTQ's figures (issue
    17): every trial runs with the driver's two threads (not Ray's one per CPU slot), in its
    configuration and its provenance."""
    import torch

    sweep = write_sweep(tmp_path / "s.yaml", wide_llama, ["int4", "int8"], [32])
    data = yaml.safe_load(sweep.read_text())
    data |= {"algorithms": ["rtn", "gptq"], "formats": ["int4"],
             "calibration": {"source": "builtin:python-docs", "ctx": 32, "windows": 4}}  # fmt: skip
    sweep.write_text(yaml.safe_dump(data))
    spec = load_sweep(sweep)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        on_ray = run_sweep(spec, tmp_path / "ray.sqlite", RayExecutor(run_trial, workers=2))
        run_sweep(spec, tmp_path / "local.sqlite", LocalExecutor(run_trial))
        assert torch.get_num_threads() == 2  # a trial restores the count it found
    finally:
        torch.set_num_threads(before)
    assert (on_ray.trials, on_ray.done, on_ray.failed) == (2, 2, {})
    ray_rows, local_rows = (_rows(tmp_path / f"{n}.sqlite") for n in ("ray", "local"))
    assert ray_rows == local_rows
    kl = {name.split(" | ")[1]: m["kl_mean"] for name, _, m in ray_rows.values()}
    assert 0 < kl["gptq int4 g32"] < kl["rtn int4 g32"]  # GPTQ beats rounding
    store = open_store(tmp_path / "ray.sqlite", create=False)
    trials = store.trials()
    store.close()
    assert {t.config["threads"] for t in trials} == {2}
    assert {t.provenance["runtime"]["threads"] for t in trials} == {2}
    t = trials[0]
    assert (
        t.provenance["lowbit_version"]
        and json.loads(Path(t.artefacts["result"]).read_text())["hash"] == t.hash
    )


def _rows(path):
    store = open_store(path, create=False)
    try:
        return {t.hash: (t.name, t.status, t.metrics) for t in store.trials()}
    finally:
        store.close()


def test_unreachable_address_is_refused_fast():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="no Ray cluster reachable"):
        check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 5
    with pytest.raises(ConfigError, match="HOST:PORT"):
        check_reachable("nohostport")


def test_pareto_points_on_ray_equal_the_in_process_points(ray_session, tmp_path, tiny_llama):
    """``lowbit pareto --ray``: the same points measured as Ray trials (recorded in the store)
    as one by one in this process: the same plans, bits and KL; a rerun finds them done."""
    from lowbit import api
    from lowbit.plan import uniform_plan
    from lowbit.runtime import RuntimeConfig
    from lowbit.sensitivity.probe import ProbeConfig
    from lowbit.sweep.points import ray_runner
    from lowbit.workflows.allocation import pareto_job
    from lowbit.workflows.spine import Execution

    handle = api.load(str(tiny_llama))
    text = lambda n: api.TextConfig("builtin:python-docs", 32, n)  # noqa: E731
    calib = api.TextConfig(str(_calib_file(tmp_path)), 32, 4)
    rt = RuntimeConfig("cpu", "float32")
    menu = tuple(api.spec_from_options(b, 16, True, "rtn") for b in (2, 4, 8))
    windows = api.text_windows(handle, calib, calibration=True)
    table = api.sensitivity(handle, menu, windows, ProbeConfig(probe_ctx=16), rt=api.runtime(rt))
    (tmp_path / "sens.json").write_text(json.dumps(table.to_dict()))
    uniform = [menu[1]]
    assert uniform_plan(menu[1]).needs_calibration() is False
    args = (str(tiny_llama), tmp_path / "sens.json", [4.0], uniform, calib, text(3))
    here = pareto_job(*args, tmp_path / "here", execution=Execution(rt))
    runner = ray_runner(tmp_path / "ray" / "pareto.results.sqlite", None, 2)
    on_ray = pareto_job(*args, tmp_path / "ray", execution=Execution(rt), runner=runner)
    key = lambda r: (r["name"], r["plan"], r["bits_per_weight_linear"], r["size_bytes"])  # noqa: E731
    assert [key(r) for r in on_ray["points"]] == [key(r) for r in here["points"]]
    for a, b in zip(on_ray["points"], here["points"], strict=True):
        assert a["kl_mean"] == pytest.approx(b["kl_mean"], rel=1e-4)
        assert a["trial"] and a["eval"]["kl"]["mean"] == a["kl_mean"]
    store = open_store(tmp_path / "ray" / "pareto.results.sqlite", create=False)
    assert {t.status for t in store.trials()} == {"done"}
    assert len(store.trials()) == len(here["points"])
    store.close()


def _calib_file(tmp_path: Path) -> Path:
    from lowbit.evaluation.text import BuiltinText, load_text

    path = tmp_path / "calib.txt"
    path.write_text(load_text(BuiltinText("python-docs", "calib"))[:20_000])
    return path


def test_sensitivity_shards_on_ray_equal_the_whole_table(ray_session, tmp_path, wide_llama):
    """``lowbit sensitivity --ray``: the blocks measured in shards as Ray trials, merged, give
    the table measured in this process bit for bit (KL, Hessian and Fisher proxies) on a model
    wide enough for torch's thread count to change GPTQ's figures (issue 17): every shard runs
    with this process's two threads (not Ray's one per CPU slot), in its configuration and
    provenance; a resumed run finds every shard done in the store and runs nothing."""
    import torch

    from lowbit import api
    from lowbit.sensitivity.probe import ProbeConfig
    from lowbit.sweep.points import ray_runner
    from lowbit.sweep.probes import probe_trial
    from lowbit.workflows import sensitivity_job

    calib = api.TextConfig(str(_calib_file(tmp_path)), 32, 4)
    menu = tuple(api.spec_from_options(b, 16, True, a) for b in (2, 4) for a in ("rtn", "gptq"))
    store = tmp_path / "ray.results.sqlite"
    run = lambda resume: ray_runner(  # noqa: E731
        store, None, 2, trial=probe_trial, label="shards", resume=resume
    )
    probe = ProbeConfig(probe_windows=2, probe_ctx=16, fisher_windows=2, fisher_ctx=16)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a Ray worker would run one
    try:
        here = sensitivity_job(str(wide_llama), menu, calib, probe, tmp_path / "here.json")
        on_ray = sensitivity_job(
            str(wide_llama), menu, calib, probe, tmp_path / "ray.json", runner=run(False)
        )
    finally:
        torch.set_num_threads(before)
    assert here.probe["threads"] == on_ray.probe["threads"] == 2
    assert on_ray.is_complete() and list(on_ray.entries) == list(here.entries)  # same order
    sha = lambda name: json.loads((tmp_path / name).read_text())["content_sha256"]  # noqa: E731
    assert sha("ray.json") == sha("here.json")
    for key, e in here.entries.items():
        r = on_ray.entries[key]
        assert (r.bits, r.hessian, r.kl, r.fisher) == (e.bits, e.hessian, e.kl, e.fisher)
    s = open_store(store, create=False)
    trials = s.trials()
    s.close()
    assert len(trials) == 2 and {t.status for t in trials} == {"done"}
    assert {t.provenance["runtime"]["threads"] for t in trials} == {2}
    assert {t.config["threads"] for t in trials} == {2}
    blocks = sorted(b for t in trials for b in t.config["probe"]["blocks"])
    assert blocks == list(range(here.n_blocks))
    again = sensitivity_job(
        str(wide_llama), menu, calib, probe, tmp_path / "again.json", runner=run(True)
    )
    assert again.entries == on_ray.entries
    s = open_store(store, create=False)
    assert [t.finished for t in s.trials()] == [t.finished for t in trials]  # none run again
    s.close()
