"""A sweep of tiny RTN trials end to end through a local Ray (one Ray session for the module),
then ``lowbit results``; an unreachable ``--address`` is refused fast."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

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


def test_ray_sweep_equals_the_same_trials_in_one_process(ray_session, tmp_path, tiny_llama):
    import torch

    sweep = write_sweep(tmp_path / "s.yaml", tiny_llama, ["int4", "int8"], [32])
    spec = load_sweep(sweep)
    on_ray = run_sweep(spec, tmp_path / "ray.sqlite", RayExecutor(run_trial, workers=2))
    assert (on_ray.trials, on_ray.done, on_ray.failed) == (2, 2, {})
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray's workers run one thread per CPU slot
    try:
        run_sweep(spec, tmp_path / "local.sqlite", LocalExecutor(run_trial))
    finally:
        torch.set_num_threads(before)
    ray_rows, local_rows = (_rows(tmp_path / f"{n}.sqlite") for n in ("ray", "local"))
    assert ray_rows == local_rows
    kl = {name: m["kl_mean"] for name, _, m in ray_rows.values()}
    int4, int8 = (next(v for k, v in kl.items() if f"int{b} " in k) for b in (4, 8))
    assert 0 < int8 < int4  # more bits, less divergence
    store = open_store(tmp_path / "ray.sqlite", create=False)
    (t, *_) = store.trials()
    store.close()
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
