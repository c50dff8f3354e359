"""The public Python API: one function per job, typed, returning immutable results.

- models and texts: :func:`load`, :func:`runtime`, :func:`text_windows`, :class:`TextConfig`;
- quantization: :func:`quantize`, :func:`saving` / :func:`finish_save` / :func:`save`,
  :func:`load_saved`, :func:`footprint`, :func:`export`;
- evaluation (one model in memory, the reference cached on disk): :func:`view_of`,
  :func:`quantized_view`, :func:`evaluate`, :func:`reference_cache`, tasks;
- analysis: :func:`sensitivity`, :func:`allocate`; cost: :func:`estimate_performance`.

Every result file is written with provenance (lowbit version, model and data fingerprints, the
configuration, the runtime, timings, machine). The CLI calls these functions and nothing below.
"""

from lowbit.allocation import AvgBits, MaxBytes
from lowbit.api.analysis import allocate, load_table, sensitivity
from lowbit.api.core import (
    JsonDict,
    TextConfig,
    Windows,
    check_distinct_texts,
    check_outputs,
    load,
    plan_from_options,
    provenance,
    provenance_light,
    runtime,
    spec_from_options,
    text_windows,
    write_result,
)
from lowbit.api.cost import (
    estimate_performance,
    executed_precision,
    model_config,
    this_machine_for,
)
from lowbit.api.evaluate import (
    evaluate,
    model_view,
    perplexity,
    quantized_view,
    reference_cache,
    reference_key,
    saved_origin,
    view_of,
)
from lowbit.api.quantize import (
    check_origin,
    check_resumable,
    check_runtime_plan,
    export,
    fake_quant_model,
    finish_save,
    footprint,
    load_saved,
    origin,
    quantize,
    resumable,
    save,
    saving,
)
from lowbit.api.tasks import (
    cached_task_run,
    check_tasks,
    compare_task_runs,
    evaluate_tasks,
    load_for_tasks,
    store_task_run,
)
from lowbit.evaluation.harness import TaskConfig
from lowbit.models.pipeline import Propagation
from lowbit.perf.estimate import Layout
from lowbit.plan import LayerSpec, Plan
from lowbit.runtime import RuntimeConfig
from lowbit.sensitivity.probe import ProbeConfig

__all__ = [
    "AvgBits",
    "JsonDict",
    "LayerSpec",
    "Layout",
    "MaxBytes",
    "Plan",
    "ProbeConfig",
    "Propagation",
    "RuntimeConfig",
    "TaskConfig",
    "TextConfig",
    "Windows",
    "allocate",
    "cached_task_run",
    "check_distinct_texts",
    "check_origin",
    "check_outputs",
    "check_resumable",
    "check_runtime_plan",
    "check_tasks",
    "compare_task_runs",
    "estimate_performance",
    "evaluate",
    "evaluate_tasks",
    "executed_precision",
    "export",
    "fake_quant_model",
    "finish_save",
    "footprint",
    "load",
    "load_for_tasks",
    "load_saved",
    "load_table",
    "model_config",
    "model_view",
    "origin",
    "perplexity",
    "plan_from_options",
    "provenance",
    "provenance_light",
    "quantize",
    "quantized_view",
    "reference_cache",
    "reference_key",
    "resumable",
    "runtime",
    "save",
    "saved_origin",
    "saving",
    "sensitivity",
    "spec_from_options",
    "store_task_run",
    "text_windows",
    "this_machine_for",
    "view_of",
    "write_result",
]
