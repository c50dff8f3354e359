"""The API's evaluation functions: one model in memory, the reference cached on disk.

A reference's per-token log-probabilities are computed once per (model, text, ctx, windows,
resolved BOS choice, compute dtype) and cached under ``$LOWBIT_CACHE/references`` (or a file
the user names); candidates are then evaluated one after another against it, each layer-wise on the
block runner, so no two models, and no whole model, are ever in memory at once.

Under torchrun (``Runtime.world``) the windows are split over the ranks like calibration windows
(contiguous shares, :meth:`~lowbit.runtime.distributed.World.shard`); each rank scores its
share and the per-token figures are gathered in window order, so every figure (means,
quantiles, stderr) is computed from the same tokens as in one process. A missing reference
cache is computed by rank 0 alone while the others wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from lowbit.api.core import Windows, load, runtime
from lowbit.api.quantize import check_origin, origin

if TYPE_CHECKING:
    import torch

    from lowbit.evaluation.metrics import Accumulator, EvalResult
    from lowbit.evaluation.refcache import ReferenceKey
    from lowbit.models.quantize import QuantizedModel
    from lowbit.models.sources import ModelHandle
    from lowbit.models.views import ModelView
    from lowbit.runtime import Runtime

Progress = Callable[[int, int], None]


def view_of(source: str, *, allow_pickle: bool = False) -> tuple[ModelView, ModelHandle]:
    """(the model as evaluation runs it, the handle of the model it is or was made from) for a
    model source or a directory saved by ``lowbit quantize``."""
    from lowbit.models.saving import is_quantized_dir

    if is_quantized_dir(Path(source)):
        from lowbit.models.saving import read_manifest, saved_config
        from lowbit.models.views import saved_view

        manifest = read_manifest(Path(source))
        handle = origin(manifest)
        config = saved_config(Path(source), manifest)
        return saved_view(source, manifest, config, handle.arch), handle
    handle = load(source, allow_pickle=allow_pickle)
    return model_view(handle), handle


def saved_origin(source: str) -> ModelHandle | None:
    """The model a saved quantized directory was made from, checked; None for other sources."""
    from lowbit.models.saving import is_quantized_dir, read_manifest

    if not is_quantized_dir(Path(source)):
        return None
    manifest = read_manifest(Path(source))
    handle = origin(manifest)
    check_origin(source, handle, manifest)
    return handle


def model_view(handle: ModelHandle) -> ModelView:
    from lowbit.models.views import original_view

    return original_view(handle)


def quantized_view(qm: QuantizedModel, name: str = "quantized") -> ModelView:
    """The fake-quantized model of ``qm``, read block by block over its original's weights."""
    from lowbit.models.views import quantized_view as _view

    return _view(qm, name)


def reference_key(view: ModelView, windows: Windows, rt: Runtime) -> ReferenceKey:
    from lowbit.evaluation.refcache import ReferenceKey

    return ReferenceKey(
        model=view.fingerprint,
        text=str(windows.info.get("fingerprint", "")),
        ctx=int(windows.ids.shape[1]),
        windows=int(windows.ids.shape[0]),
        selection=str(windows.info.get("selection", "")),
        bos=windows.bos.cache_key,
        dtype=str(rt.dtype).removeprefix("torch."),
        device=rt.device.type,
    )


def reference_cache(
    reference: ModelView,
    windows: Windows,
    rt: Runtime | None = None,
    *,
    path: Path | None = None,
    progress: Progress | None = None,
) -> tuple[Path, float]:
    """(the cache file of ``reference``'s log-probabilities on ``windows``, seconds spent
    computing it: 0 when it existed). An existing ``path`` must match, else an ArtefactError
    names what differs."""
    from lowbit.evaluation.metrics import write_reference_windows
    from lowbit.evaluation.refcache import cache_path, open_reference
    from lowbit.models.layerwise import window_logprobs
    from lowbit.models.sources import cache_root

    rt = rt or runtime()
    key = reference_key(reference, windows, rt)
    vocab = int(reference.config.vocab_size)
    path = Path(path) if path is not None else cache_path(cache_root() / "references", key)
    if path.exists():
        open_reference(path, key, vocab=vocab).close()  # checked before it is used
        return path, 0.0
    logps = window_logprobs(reference, windows.ids, rt, progress=progress)
    seconds = write_reference_windows(logps, windows.ids, path, key, vocab)
    return path, seconds


def evaluate(
    reference: ModelView,
    candidates: Mapping[str, ModelView],
    windows: Windows,
    rt: Runtime | None = None,
    *,
    cache: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, EvalResult]:
    """Perplexity of ``reference`` and, for each candidate in turn, perplexity, KL divergence
    to the reference, top-1 agreement and Δp on ``windows``; keyed ``"reference"`` and by
    candidate name. ``cache``: where the reference's log-probabilities are (or go)."""
    from lowbit.errors import DataError
    from lowbit.evaluation.metrics import reference_result, score_candidate
    from lowbit.evaluation.refcache import open_reference

    if "reference" in candidates:
        raise DataError("a candidate model may not be named 'reference'; rename it")
    rt = rt or runtime()
    _check_ctx([reference, *candidates.values()], windows)
    path, seconds = _reference_on_ranks(reference, windows, rt, cache, progress)
    key = reference_key(reference, windows, rt)
    share = rt.world.shard(int(windows.ids.shape[0]), "evaluation windows")
    results: dict[str, EvalResult] = {}
    with open_reference(path, key) as ref:
        results["reference"] = reference_result(ref, seconds)
        for name, view in candidates.items():
            t0 = time.perf_counter()
            logps = _share_logprobs(view, windows, share, rt, progress)
            result = score_candidate(logps, ref, count=_len(share), gather=_gather(rt))
            results[name] = replace(result, wall_seconds=time.perf_counter() - t0)
    return results


def _reference_on_ranks(
    reference: ModelView,
    windows: Windows,
    rt: Runtime,
    cache: Path | None,
    progress: Progress | None,
) -> tuple[Path, float]:
    """:func:`reference_cache` under torch.distributed: rank 0 computes a missing cache while
    the others wait, then they open it (a rank that cannot see rank 0's file computes its own)."""

    def compute() -> tuple[Path, float]:
        return reference_cache(reference, windows, rt, path=cache, progress=progress)

    found = compute() if rt.world.rank == 0 else None
    rt.world.barrier()  # one process: no wait
    return found if found is not None else compute()


def _share_logprobs(
    view: ModelView, windows: Windows, share: slice, rt: Runtime, progress: Progress | None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Log-probabilities of this rank's ``share`` of the windows, by window index."""
    from lowbit.models.layerwise import window_logprobs

    ids = windows.ids[share]
    for w, logp in window_logprobs(view, ids, rt, progress=progress):
        yield share.start + w, logp


def _len(share: slice) -> int:
    return share.stop - share.start


def _gather(rt: Runtime) -> Callable[[Accumulator], list[Accumulator]] | None:
    """The ranks' accumulators joined (under torch.distributed), or None for one process."""
    return rt.world.all_gather if rt.world.distributed else None


def perplexity(
    view: ModelView,
    windows: Windows,
    rt: Runtime | None = None,
    *,
    progress: Progress | None = None,
) -> EvalResult:
    """Perplexity of one model on ``windows``, layer-wise, with no reference."""
    from lowbit.evaluation.metrics import score_alone

    rt = rt or runtime()
    _check_ctx([view], windows)
    t0 = time.perf_counter()
    share = rt.world.shard(int(windows.ids.shape[0]), "evaluation windows")
    logps = _share_logprobs(view, windows, share, rt, progress)
    result = score_alone(logps, windows.ids, count=_len(share), gather=_gather(rt))
    return replace(result, wall_seconds=time.perf_counter() - t0)


def _check_ctx(views: list[ModelView], windows: Windows) -> None:
    from lowbit.errors import DataError

    ctx = int(windows.ids.shape[1])
    for view in views:
        limit = getattr(view.config, "max_position_embeddings", None)
        if limit is not None and ctx > limit:
            raise DataError(
                f"ctx {ctx} is longer than {view.name} supports ({limit} positions); use --ctx "
                f"{limit} or less"
            )
