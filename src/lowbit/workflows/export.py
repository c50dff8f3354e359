"""The export job: a saved quantized model (or a model and a plan, quantized first) written as
compressed-tensors or GGUF, with a JSON report of what was written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lowbit import api
from lowbit.errors import ArtefactError, ConfigError
from lowbit.plan import Plan
from lowbit.report.console import console
from lowbit.workflows.spine import DEFAULT_EXECUTION, Execution, quantize_windows, text_windows


def export_job(
    source: str,
    target: str,
    out: Path,
    *,
    plan: Plan | None = None,
    calib: api.TextConfig | None = None,
    dtype: str = "float32",
    allow_unfused: bool = False,
    eval_result: Path | None = None,
    result_path: Path | None = None,
    execution: Execution = DEFAULT_EXECUTION,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Export ``source`` (a directory saved by ``lowbit quantize``, or a model with ``plan``)."""
    from lowbit.export import ExportOptions
    from lowbit.models.saving import is_quantized_dir

    ExportOptions(target, dtype)  # type: ignore[arg-type]  # validates before any work
    result_path = result_path or Path(f"{out}.result.json")
    api.check_outputs(out, result_path, overwrite=overwrite)
    figures = _figures(eval_result) if eval_result else None
    rt = api.runtime(execution.runtime)
    if is_quantized_dir(Path(source)):
        if plan is not None:
            raise ConfigError(f"{source} is already quantized with its own plan; drop --plan")
        qm, model = api.load_saved(Path(source), rt)
        _check_figures_model(eval_result, figures, qm.handle)
    else:
        if plan is None:
            raise ConfigError(
                f"{source} is not a directory saved by `lowbit quantize`: give --plan to "
                "quantize it first, or export a saved quantized model"
            )
        handle = api.load(source, allow_pickle=allow_pickle)
        _check_figures_model(eval_result, figures, handle)
        api.check_runtime_plan(handle, plan)
        cfg = calib or api.TextConfig()
        windows = text_windows(handle, cfg, calibration=True) if plan.needs_calibration() else None
        qm = quantize_windows(handle, plan, windows, "quantize", rt, execution)
        model = api.fake_quant_model(handle, qm, rt)
    report = api.export(
        qm,
        model,
        target,
        out,
        dtype=dtype,
        allow_unfused=allow_unfused,
        figures=figures,
        overwrite=overwrite,
    )
    _print(report)
    prov = api.provenance(
        "export",
        qm.handle,
        {"target": target, "dtype": dtype, "plan": qm.plan.to_dict(), "source": source},
        {},
        {"export_s": report.seconds},
    )
    result = {**prov, "result": report.to_dict()}
    api.write_result(result_path, result, outputs={"output": out}, overwrite=overwrite)
    return result


def _figures(path: Path) -> dict[str, Any]:
    """The scalar figures of a ``lowbit eval`` (or ``lowbit run``) result, for the model card."""
    try:
        data = json.loads(Path(path).read_text())
        results = data["results"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtefactError(
            f"{path} is not a lowbit eval result (no 'results'): {exc}; give the JSON that "
            "`lowbit eval` wrote"
        ) from exc
    res = results.get("model") or next(iter(results.values()), {})
    kl = res.get("kl") or {}
    figures = {"model fingerprint": (data.get("model") or {}).get("fingerprint")}
    figures |= {"eval text": data.get("data", {}).get("eval", {}).get("source", "?")}
    figures |= {k: v for k, v in res.items() if isinstance(v, int | float)}
    figures |= {f"kl_{k}": v for k, v in kl.items() if isinstance(v, int | float)}
    return figures


def _check_figures_model(path: Path | None, figures: dict[str, Any] | None, handle: Any) -> None:
    """The figures for a model card must be of the model exported (or the one it came from)."""
    made_from = None if figures is None else figures.pop("model fingerprint", None)
    if made_from is not None and made_from != handle.fingerprint:
        raise ArtefactError(
            f"{path} is a result of another model (fingerprint {made_from}), not of "
            f"{handle.source} ({handle.fingerprint}); give the `lowbit eval` result of this model"
        )


def _print(report: Any) -> None:
    counts: dict[str, int] = {}
    for kind in report.layers.values():
        counts[kind] = counts.get(kind, 0) + 1
    from rich.table import Table

    table = Table("stored as", "layers", title=f"{report.target} export → {report.path}")
    for kind, n in sorted(counts.items()):
        table.add_row(kind, str(n))
    console.print(table)
    console.print(
        f"{report.size_bytes / 1e6:.2f} MB written ({report.predicted_bytes / 1e6:.2f} MB "
        f"predicted by the plan); largest weight difference {report.max_weight_error:.3g}; "
        f"{report.seconds:.1f} s"
    )
    for note in report.notes:
        console.print(f"note: {note}")
