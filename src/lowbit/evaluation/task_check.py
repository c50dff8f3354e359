"""Checks on tasks before any model is loaded, on the harness's own task index and configs.

Sources: every leaf task of a requested name (task, group, tag or YAML file) reads either local
files through a ``datasets`` builder (``dataset_path: json``, ``csv``, ``parquet``, ``text``,
``arrow``), which must all exist, or the hub, which must be reachable: with ``HF_HUB_OFFLINE``
set or the hub's host unreachable, such a task fails at once instead of retrying for a minute.

Built tasks: every template renders on the documents that will be evaluated (a field missing
from the documents is named with the template's line in the task's YAML), generation tasks
have stop sequences of their own, and the output type and metric give one verdict per sample.
"""

from __future__ import annotations

import glob
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lowbit.errors import ConfigError, DataError

LOCAL_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow", "pandas"})
HUB_TIMEOUT_S = 3.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
# output type -> the per-sample 0/1 metrics lowbit compares sample by sample
VERDICT_METRICS = {
    "multiple_choice": ("acc",),
    "loglikelihood": ("acc",),
    "generate_until": ("exact_match", "acc"),
}
LOCAL_HINT = (
    "point lowbit at local files: write a task YAML with `dataset_path: json` (or csv, "
    "parquet) and `dataset_kwargs: {data_files: {test: FILE}}`, and pass it to --tasks or its "
    "directory to --include-path (README, 'Tasks of your own')"
)


@dataclass(frozen=True)
class LeafSource:
    """Where one leaf task's documents come from."""

    task: str
    yaml: Path | None
    dataset_path: str | None
    data_files: tuple[str, ...]
    generative: bool = False
    stops: tuple[str, ...] = ()  # the YAML's own generation_kwargs.until

    @property
    def local(self) -> bool:
        path = self.dataset_path
        return path in LOCAL_BUILDERS or (path is not None and Path(path).expanduser().is_dir())


def leaf_sources(manager: Any, spec: str) -> list[LeafSource]:
    """The leaf tasks of ``spec`` (a registered name or a YAML file) with their sources, from
    the harness's index and YAML loader (no dataset is opened)."""
    from lm_eval.tasks._index import Kind, TaskIndex

    index = manager.task_index
    entry = index.get(spec) or TaskIndex.entry_from_path(Path(spec))
    if entry is None:
        return []
    if entry.kind is Kind.TAG:
        return [s for name in sorted(entry.tags) for s in leaf_sources(manager, name)]
    cfg = _config(entry)
    if entry.kind is Kind.GROUP:
        out = []
        for item in cfg.get("task", []):
            name = item if isinstance(item, str) else item.get("task") or item.get("group")
            out += leaf_sources(manager, str(name)) if isinstance(name, str) else []
        return out
    return [_source(entry.name, entry.yaml_path, cfg)]


def _config(entry: Any) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    if entry.yaml_path is not None:
        return dict(load_yaml(entry.yaml_path, resolve_func=False, recursive=True))
    return dict(entry.cfg or {})


def _source(name: str, yaml: Path | None, cfg: dict[str, Any]) -> LeafSource:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        flat = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    else:
        flat = [files] if isinstance(files, str) else list(files or [])
    path = cfg.get("dataset_path")
    until = (cfg.get("generation_kwargs") or {}).get("until") or ()
    return LeafSource(
        name, yaml, None if path is None else str(path), tuple(map(str, flat)),
        cfg.get("output_type") == "generate_until",
        tuple(until) if isinstance(until, list) else (until,),
    )  # fmt: skip


def check_sources(manager: Any, specs: list[str]) -> None:
    """Local data files exist; hub datasets only when the hub answers (fails in seconds)."""
    hub: list[LeafSource] = []
    for spec in specs:
        for leaf in leaf_sources(manager, spec):
            if leaf.generative:
                _check_stops(leaf)
            if leaf.local:
                _check_files(leaf)
            else:
                hub.append(leaf)
    if not hub:
        return
    reason = hub_unreachable()
    if reason is not None:
        names = ", ".join(sorted({f"{s.task} ({s.dataset_path})" for s in hub})[:8])
        raise DataError(
            f"{len(hub)} task(s) read their documents from the Hugging Face hub, which is not "
            f"available ({reason}): {names}; {LOCAL_HINT}. Local tasks: `lowbit ls tasks`"
        )


def _check_files(leaf: LeafSource) -> None:
    where = f"task {leaf.task!r}" + (f" ({leaf.yaml})" if leaf.yaml else "")
    if leaf.dataset_path in LOCAL_BUILDERS and not leaf.data_files:
        raise DataError(
            f"{where}: dataset_path {leaf.dataset_path} needs dataset_kwargs.data_files "
            "naming the file of each split"
        )
    for file in leaf.data_files:
        if "://" not in file and not glob.glob(os.path.expanduser(file)):
            raise DataError(
                f"{where}: data file {file!r} not found (relative paths are read from the "
                f"current directory, {Path.cwd()}, as the harness reads them; give an "
                "absolute path or run from the file's directory)"
            )


def hub_unreachable() -> str | None:
    """Why the hub cannot be used now (an offline variable, or its host not answering within
    a few seconds), or None."""
    for var in OFFLINE_VARIABLES:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host = url.hostname or endpoint
    port = url.port or (443 if url.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_TIMEOUT_S).close()
    except OSError as exc:
        return f"{host} cannot be reached: {exc}"
    return None


def check_built(tasks: dict[str, Any], limit: int | None, label: Any = str) -> None:
    """Every leaf task gives one 0/1 verdict per sample (one generation each), and every
    template renders on the documents that will be evaluated."""
    for name, task in tasks.items():
        kind = task.get_config("output_type")
        metrics = [m.get("metric") for m in task.get_config("metric_list") or []]
        verdict = [m for m in VERDICT_METRICS.get(kind, ()) if m in metrics]
        if not verdict:
            raise ConfigError(
                f"task {label(name)!r} ({kind}, metrics {metrics}) cannot be compared per "
                f"sample: lowbit evaluates {', '.join(VERDICT_METRICS)} tasks scored by "
                "'acc' (or 'exact_match' for generation); run it with lm_eval directly"
            )
        if kind == "generate_until" and (task.get_config("repeats") or 1) != 1:
            raise ConfigError(
                f"task {label(name)!r}: repeats {task.get_config('repeats')}; lowbit "
                "compares one greedy generation per document (repeats: 1)"
            )
        _check_templates(task, label(name), limit)


def verdict_metric(task: Any) -> str:
    metrics = [m.get("metric") for m in task.get_config("metric_list") or []]
    kind = task.get_config("output_type")
    return next(m for m in VERDICT_METRICS[kind] if m in metrics)


def _check_stops(leaf: LeafSource) -> None:
    """The harness would default to stopping at a blank line only: a task of one's own must
    say where its answers end."""
    if not leaf.stops or not all(isinstance(u, str) and u for u in leaf.stops):
        raise ConfigError(
            f"task {leaf.task!r} ({leaf.yaml or 'inline'}): a generation task needs stop "
            'sequences; add `generation_kwargs: {until: ["\\n\\n"]}` (the strings that end an '
            "answer), else each answer runs on to --max-gen-toks or a blank line"
        )


TEMPLATE_KEYS = ("doc_to_text", "doc_to_target", "doc_to_choice")


def _check_templates(task: Any, name: str, limit: int | None) -> None:
    from jinja2.exceptions import UndefinedError

    docs = list(task.eval_docs)[: limit or None]
    fewshot = task.fewshot_docs() if task.get_config("num_fewshot") else None
    for origin, pool in (("evaluated", docs), ("few-shot", list(fewshot or [])[: limit or None])):
        for i, doc in enumerate(pool):
            for key in TEMPLATE_KEYS:
                if task.get_config(key) is None:
                    continue
                try:
                    getattr(task, key)(doc)
                except UndefinedError as exc:
                    raise DataError(
                        f"task {name!r}: {key} {_where(task, key)}refers to a field the "
                        f"documents lack ({exc}); {origin} document {i} has fields "
                        f"{', '.join(map(str, doc))}"
                    ) from None


def template_error(manager: Any, specs: list[str], exc: Exception) -> DataError:
    """The error for a template that failed while the harness built a task: the YAML line of
    the template naming the missing field, found among the leaf tasks of ``specs``."""
    from jinja2.exceptions import UndefinedError

    field = str(exc).split("'")[1] if str(exc).count("'") >= 2 else str(exc)
    for spec in specs:
        try:
            manager.load([spec])
        except UndefinedError:
            for leaf in leaf_sources(manager, spec):
                where = _line_with(leaf.yaml, field) if leaf.yaml else None
                if where:
                    return DataError(
                        f"task {leaf.task!r}: {where} refers to a field the documents lack "
                        f"({exc}); name one of the fields of your data file"
                    )
            return DataError(f"task {spec!r}: a template refers to a missing field ({exc})")
    return DataError(f"a task template refers to a missing field ({exc})")


def _line_with(path: Path, field: str) -> str | None:
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        key = line.split(":", 1)[0]
        if key in TEMPLATE_KEYS and field in line:
            return f"{key} ({path} line {n})"
    return None


def _yaml_of(task: Any) -> str | None:
    meta = task.get_config("metadata") or {}
    source = meta.get("config_source") if isinstance(meta, dict) else None
    return None if source in (None, "inline") else str(source)


def _where(task: Any, key: str) -> str:
    """``(FILE line N) `` for the line that sets ``key`` in the task's YAML, where it is."""
    path = _yaml_of(task)
    if path is None or not Path(path).is_file():
        return ""
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith(f"{key}:"):
            return f"({path} line {n}) "
    return f"(inherited by {path} through its include) "
