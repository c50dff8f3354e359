"""The API's evaluation functions: one model in memory, the reference cached on disk.

A reference's per-token log-probabilities are computed once per (model, text, ctx, windows,
resolved BOS choice, compute dtype) and cached under ``$LOWBIT_CACHE/references`` (or a file
the user names); candidates are then evaluated one after another against it, each layer-wise on the
block runner, so no two models, and no whole model, are ever in memory at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from lowbit.api.core import Windows, load, runtime
from lowbit.api.quantize import check_origin, origin

if TYPE_CHECKING:
    from lowbit.evaluation.metrics import EvalResult
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
    from lowbit.models.layerwise import window_logprobs

    if "reference" in candidates:
        raise DataError("a candidate model may not be named 'reference'; rename it")
    rt = rt or runtime()
    _check_ctx([reference, *candidates.values()], windows)
    path, seconds = reference_cache(reference, windows, rt, path=cache, progress=progress)
    key = reference_key(reference, windows, rt)
    results: dict[str, EvalResult] = {}
    with open_reference(path, key) as ref:
        results["reference"] = reference_result(ref, seconds)
        for name, view in candidates.items():
            t0 = time.perf_counter()
            logps = window_logprobs(view, windows.ids, rt, progress=progress)
            result = score_candidate(logps, ref)
            results[name] = replace(result, wall_seconds=time.perf_counter() - t0)
    return results


def perplexity(
    view: ModelView,
    windows: Windows,
    rt: Runtime | None = None,
    *,
    progress: Progress | None = None,
) -> EvalResult:
    """Perplexity of one model on ``windows``, layer-wise, with no reference."""
    from lowbit.evaluation.metrics import score_alone
    from lowbit.models.layerwise import window_logprobs

    rt = rt or runtime()
    _check_ctx([view], windows)
    t0 = time.perf_counter()
    result = score_alone(window_logprobs(view, windows.ids, rt, progress=progress), windows.ids)
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
