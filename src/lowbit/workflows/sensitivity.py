"""``lowbit sensitivity``: measure the table, checkpointing after every block so that an
interrupted run resumes where it stopped; write JSON, CSV and an HTML report."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lowbit import api
from lowbit._io import atomic_file, figures_sha256, write_json
from lowbit.errors import ArtefactError, OutputExistsError
from lowbit.plan import LayerSpec
from lowbit.report.combined import combined_report
from lowbit.report.console import console, progress_bar
from lowbit.runtime import cpu_threads
from lowbit.workflows.incontext import windows_sha256
from lowbit.workflows.shards import Runner, merge_shards, shard_configs
from lowbit.workflows.spine import DEFAULT_EXECUTION, Execution, text_windows


def sensitivity_paths(out: Path) -> dict[str, Path]:
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return {
        "json": out,
        "csv": Path(f"{stem}.csv"),
        "html": Path(f"{stem}.html"),
        "partial": Path(f"{out}.partial"),
    }


def sensitivity_job(
    model: str,
    menu: tuple[LayerSpec, ...],
    calib: api.TextConfig,
    probe: Any,
    out: Path,
    *,
    resume: bool = False,
    execution: Execution = DEFAULT_EXECUTION,
    overwrite: bool = False,
    allow_pickle: bool = False,
    runner: Runner | None = None,
) -> Any:
    """Measure ``model``'s sensitivity to each spec of ``menu`` on ``execution``'s runtime;
    returns the table. ``runner`` (with ``shards``): the blocks split into shards measured as
    trials of a sweep (Ray tasks, a results store), merged into one table."""
    from lowbit.sensitivity import check_menu

    check_menu(menu)
    paths = sensitivity_paths(out)
    api.check_outputs(paths["json"], paths["csv"], paths["html"], overwrite=overwrite)
    rt = api.runtime(execution.runtime)
    handle = api.load(model, allow_pickle=allow_pickle)
    windows = text_windows(handle, calib, calibration=True, held_out=probe.held_out_windows)
    threads = cpu_threads()
    key = {**_run_key(handle, menu, windows, probe), "threads": threads}
    if runner is not None:
        t0 = time.perf_counter()
        configs = shard_configs(
            model, len(handle.arch.blocks), menu, calib, probe, execution, runner.shards, threads
        )
        table = merge_shards(list(runner(configs).values()))
        table.timings["wall_s"] = time.perf_counter() - t0
    else:
        table = _measure_here(handle, menu, windows, probe, rt, paths["partial"], key, resume)
    table.probe["calibration"] = windows.info
    table.probe["threads"] = threads  # GPTQ's figures depend on it (issue 17)
    table.probe["calibration_sha256"] = windows_sha256(windows.ids)
    with atomic_file(paths["csv"], overwrite=overwrite) as f:
        f.write(table.to_csv())
    data = table.to_dict()
    data["content_sha256"] = {"figures": figures_sha256(data)}
    page = combined_report([(str(paths["json"]), data)], f"Sensitivity of {model}")
    page.write(paths["html"], overwrite=overwrite)
    write_json(paths["json"], data, overwrite=overwrite)  # last: the run is complete
    paths["partial"].unlink(missing_ok=True)
    console.print(
        f"sensitivity of {len(table.layers)} layers × {len(menu)} specs in "
        f"{table.timings['total_s']:.0f} s: {paths['json']}, {paths['csv']}, {paths['html']}"
    )
    return table


def _measure_here(
    handle: Any,
    menu: tuple[LayerSpec, ...],
    windows: api.Windows,
    probe: Any,
    rt: Any,
    partial_path: Path,
    key: dict,
    resume: bool,
) -> Any:
    """The table in this process, checkpointed after every block to ``partial_path``."""
    done = _resume(partial_path, key, resume)
    partial: dict[str, Any] = {"key": key, "entries": [asdict(e) for e in done.values()]}

    def checkpoint(block: int, entries: list) -> None:
        partial["entries"].extend(asdict(e) for e in entries)
        write_json(partial_path, partial, overwrite=True)

    with progress_bar("sensitivity: blocks", None) as update:
        return api.sensitivity(
            handle, menu, windows, probe, rt=rt, done=done, on_block=checkpoint, progress=update
        )


def _run_key(handle: Any, menu: tuple[LayerSpec, ...], windows: Any, probe: Any) -> dict:
    return {
        "model": handle.fingerprint,
        "menu": [s.to_dict() for s in menu],
        "calibration": windows.info["fingerprint"],
        "windows": windows.info["windows"],
        "ctx": windows.info["ctx"],
        "bos": windows.info["bos"],
        "probe": asdict(probe),
    }


def _resume(partial: Path, key: dict, resume: bool) -> dict:
    from lowbit.sensitivity import Entry

    if not partial.exists():
        return {}
    if not resume:
        raise OutputExistsError(
            f"{partial} holds an interrupted run; pass --resume to continue it or delete it"
        )
    try:
        data = json.loads(partial.read_text())
    except json.JSONDecodeError as exc:
        raise ArtefactError(f"{partial} is not valid JSON ({exc}); delete it") from exc
    if data.get("key") != json.loads(json.dumps(key)):
        raise ArtefactError(
            f"{partial} was made with another model, menu, calibration, probe setting or torch "
            "thread count; delete it or run with the same options (and threads)"
        )
    entries = [Entry(**e) for e in data.get("entries", [])]
    console.print(f"resuming: {len(entries)} entries already measured")
    return {(e.layer, e.spec): e for e in entries}
