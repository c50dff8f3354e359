"""Evaluation split across torch.distributed ranks: two gloo ranks (spawned processes) each
score their share of the windows and gather the per-token figures; the result equals one
process's, quantiles included."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lowbit.algorithms import RTNConfig
from lowbit.formats import IntFormat, PerGroup
from lowbit.plan import LayerSpec, uniform_plan


def _figures(model_dir: str, cache: str) -> dict:
    """RTN W3 g16 of the tiny model against the original, and the original's perplexity alone,
    on 5 seeded windows of 16 tokens (split 3 + 2 over two ranks)."""
    from lowbit import api
    from lowbit.models.quantize import quantize_model
    from lowbit.runtime import RuntimeConfig, resolve_runtime
    from lowbit.runtime.distributed import SINGLE

    rt = resolve_runtime(RuntimeConfig(device="cpu", dtype="float32"))  # joins the ranks
    handle = api.load(model_dir)
    plan = uniform_plan(LayerSpec(IntFormat(3), PerGroup(16), RTNConfig()))
    qm = quantize_model(handle, plan, None, runtime=replace(rt, world=SINGLE))  # each rank: all
    vocab = int(handle.config.vocab_size)
    ids = torch.randint(0, vocab, (5, 16), generator=torch.Generator().manual_seed(0))
    windows = api.Windows(ids, {"fingerprint": "random-5-16", "selection": "test"})
    reference = api.model_view(handle)
    res = api.evaluate(reference, {"rtn": api.quantized_view(qm)}, windows, rt, cache=Path(cache))
    alone = api.perplexity(reference, windows, rt)
    out = {name: r.to_dict() for name, r in res.items()} | {"alone": alone.to_dict()}
    for r in out.values():
        for k in ("seconds", "wall_seconds"):
            r.pop(k)
    return out


def _rank(rank: int, port: int, model_dir: str, cache: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        figures = _figures(model_dir, cache)
        Path(f"{out}.{rank}").write_text(json.dumps(figures))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_gloo_ranks_evaluate_like_one_process(tiny_llama, tmp_path):
    import torch.multiprocessing as mp

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _figures(str(tiny_llama), str(tmp_path / "one.lbref"))
    finally:
        torch.set_num_threads(before)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (port, str(tiny_llama), str(tmp_path / "two.lbref"), str(tmp_path / "ranks.json"))
    mp.spawn(_rank, args=args, nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"ranks.json.{r}").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank holds the whole result
    two = ranks[0]
    assert two.keys() == single.keys() == {"reference", "rtn", "alone"}
    assert two["rtn"]["tokens"] == single["rtn"]["tokens"] == 5 * 15
    assert two["rtn"]["kl"]["mean"] > 1e-4  # a real difference to the reference is scored
    for name in single:
        _close(two[name], single[name], name)


def _close(a: object, b: object, where: str) -> None:
    """Equal structures; floats to 1e-6 relative (each rank runs its own batches of windows)."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), where
        for k in b:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9), where
    else:
        assert a == b, where
