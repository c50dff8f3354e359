"""Data-parallel calibration on torch.distributed: two gloo ranks (spawned processes) quantize
the tiny model to the same codes as one process; ranks that disagree are refused."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from lowbit.algorithms import GPTQConfig
from lowbit.formats import IntFormat, PerGroup
from lowbit.plan import LayerSpec, uniform_plan
from lowbit.runtime.distributed import World, owners


def _plan(bits: int):
    return uniform_plan(LayerSpec(IntFormat(bits), PerGroup(16), GPTQConfig()))


def _quantized(model_dir: str, bits: int) -> tuple[dict[str, torch.Tensor], dict]:
    """GPTQ W{bits} g16 of the tiny model on 6 seeded windows: codes and scales by layer."""
    from lowbit.models.quantize import quantize_model
    from lowbit.models.sources import resolve_model
    from lowbit.runtime import RuntimeConfig, resolve_runtime

    handle = resolve_model(model_dir)
    rt = resolve_runtime(RuntimeConfig(device="cpu", dtype="float32"))
    vocab = int(handle.config.vocab_size)
    ids = torch.randint(0, vocab, (6, 16), generator=torch.Generator().manual_seed(0))
    qm = quantize_model(handle, _plan(bits), ids, runtime=rt)
    out = {}
    for name in qm.weights:
        qw = qm.weights[name]
        out[f"{name}.codes"], out[f"{name}.scale"] = qw.codes, qw.scale.float()
    return out, dict(qm.timings)


def _rank(rank: int, size: int, port: int, model_dir: str, out: str, bits: list[int]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(size), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    import torch.distributed as dist
    from safetensors.torch import save_file

    try:
        tensors, _ = _quantized(model_dir, bits[rank])
        if rank == 0:
            save_file(tensors, out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn(model_dir: Path, out: Path, bits: list[int]) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(model_dir), str(out), bits), nprocs=2, join=True)


def test_two_gloo_ranks_equal_one_process(tiny_llama, tmp_path):
    from safetensors.torch import load_file

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, timings = _quantized(str(tiny_llama), 4)
    finally:
        torch.set_num_threads(before)
    assert "all_reduce_s" not in timings
    _spawn(tiny_llama, tmp_path / "ranks.safetensors", [4, 4])
    ranks = load_file(str(tmp_path / "ranks.safetensors"))
    assert ranks.keys() == single.keys() and len(single) == 2 * 7 * 2
    for k in single:  # the same fp32 Hessians (fp64 sums of the same windows): the same codes
        assert torch.equal(ranks[k], single[k]), k


@pytest.mark.slow
def test_ranks_that_disagree_on_the_plan_are_refused(tiny_llama, tmp_path):
    with pytest.raises(Exception, match="the ranks disagree on the plan"):
        _spawn(tiny_llama, tmp_path / "x.safetensors", [4, 3])
    assert not (tmp_path / "x.safetensors").exists()


def test_owners_balance_the_work_and_shards_cover_the_windows():
    loads = [0.0, 0.0]
    assert owners([4.0, 1.0, 1.0, 1.0, 1.0], loads) == [0, 1, 1, 1, 1] and loads == [4.0, 4.0]
    assert owners([2.0, 2.0], loads) == [0, 1]
    cuts = [World(r, 3, "gloo").shard(7) for r in range(3)]
    assert [(c.start, c.stop) for c in cuts] == [(0, 3), (3, 5), (5, 7)]
    with pytest.raises(ValueError, match="cannot be split over 3 ranks"):
        World(2, 3, "gloo").shard(2)
