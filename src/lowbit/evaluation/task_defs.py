"""Local task definitions for the lm-evaluation-harness, written as the harness's own YAML.

Each local task ``local_<name>`` *includes* the harness's standard task file (so its prompt,
choices, target and metrics are the harness's, read from the installed version) and overrides
only where the documents come from: a JSONL file converted by :mod:`lowbit.evaluation.task_data`
from ``../shared/data``. The directory written here is an ``--include_path`` that the harness's
own CLI reads too, so a direct harness run on the same files is a true side-by-side check.
MMLU keeps the harness's 57 subject tasks and its four category groups.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbit._io import cache_dir_once
from lowbit._registry import Registry
from lowbit.errors import DataError
from lowbit.evaluation import task_data

LOCAL_PREFIX = "local_"
MMLU_CATEGORIES = ("stem", "humanities", "social_sciences", "other")


@dataclass(frozen=True)
class LocalTask:
    """A standard harness task whose documents are read from local files."""

    name: str
    standard_yaml: str  # relative to the harness's tasks directory
    split: str  # the split the standard task evaluates
    family: str
    files: tuple[str, ...]  # relative to the data directory; all must exist
    read: Callable[[Path], list[dict[str, Any]]]
    two_way: bool = False
    train: Callable[[Path], list[dict[str, Any]]] | None = None  # the few-shot pool, if any

    @property
    def harness_name(self) -> str:
        return LOCAL_PREFIX + self.name


LOCAL_TASKS: Registry[LocalTask] = Registry("task")
for _task in (
    LocalTask(
        "lambada_openai", "lambada/lambada_openai.yaml", "test", "language modelling",
        ("lambada/lambada_test.jsonl",), task_data.lambada,
    ),
    LocalTask(
        "hellaswag", "hellaswag/hellaswag.yaml", "validation", "commonsense",
        ("hellaswag/hellaswag_val_full.txt.bz2",), task_data.hellaswag,
    ),
    LocalTask(
        "piqa", "piqa/piqa.yaml", "validation", "commonsense",
        ("piqa/valid.jsonl", "piqa/valid-labels.lst"), task_data.piqa, two_way=True,
    ),
    LocalTask(
        "winogrande", "winogrande/default.yaml", "validation", "coreference",
        ("winogrande/dev.jsonl", "winogrande/dev-labels.lst"), task_data.winogrande, two_way=True,
    ),
    LocalTask(
        "arc_easy", "arc/arc_easy.yaml", "test", "science QA",
        ("arc/arc_easy_test.mosaic.jsonl",),
        lambda root: task_data.arc(root / "arc" / "arc_easy_test.mosaic.jsonl"),
    ),
    LocalTask(
        "arc_challenge", "arc/arc_challenge.yaml", "test", "science QA",
        ("arc/arc_challenge_test.mosaic.jsonl",),
        lambda root: task_data.arc(root / "arc" / "arc_challenge_test.mosaic.jsonl"),
    ),
    LocalTask(
        "gsm8k", "gsm8k/gsm8k.yaml", "test", "math (generative)",
        ("gsm8k/test.jsonl", "gsm8k/train.jsonl"),
        lambda root: task_data.gsm8k(root, "test"),
        train=lambda root: task_data.gsm8k(root, "train"),
    ),
):  # fmt: skip
    LOCAL_TASKS.register(_task.name, _task)
MMLU = "mmlu"  # a group: 57 subject tasks in four categories
MMLU_FAMILY = "knowledge (MMLU)"
# named task sets: ``--tasks standard`` is every local task (MMLU's subjects count one by one)
SUITES: dict[str, tuple[str, ...]] = {
    "standard": (*(t for t in LOCAL_TASKS.names()), MMLU),
}


def harness_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def local_names() -> list[str]:
    """Every task name that resolves to a local definition."""
    return [
        *LOCAL_TASKS.names(),
        MMLU,
        *(f"{MMLU}_{c}" for c in MMLU_CATEGORIES),
    ]


def is_mmlu_subject(subject: str) -> bool:
    """Whether the harness defines ``mmlu_<subject>`` as a subject of its default MMLU."""
    return (harness_tasks_dir() / "mmlu" / "default" / f"mmlu_{subject}.yaml").is_file()


def mmlu_category_of(subject: str) -> str:
    """The category of an MMLU subject, read from the harness's own subject file."""
    import yaml

    path = harness_tasks_dir() / "mmlu" / "default" / f"mmlu_{subject}.yaml"
    if not path.is_file():
        raise DataError(f"MMLU subject {subject!r} has no harness definition ({path})")
    tag = yaml.safe_load(path.read_text())["tag"]
    return str(tag).removeprefix("mmlu_").removesuffix("_tasks")


def write_task_dirs(data_root: Path, cache: Path, names: list[str]) -> list[Path]:
    """Convert the local data of the tasks ``names`` (local names; an MMLU name brings all of
    MMLU) and write their YAML, each task once per data, code and harness version; returns the
    include directories."""
    units = sorted({MMLU if _is_mmlu(n) else n for n in names})
    return [_task_dir(data_root, cache, unit) for unit in units]


def _is_mmlu(name: str) -> bool:
    return name == MMLU or name.startswith(MMLU + "_")


def _task_dir(root: Path, cache: Path, unit: str) -> Path:
    import lm_eval

    out = cache / "tasks" / f"{unit}-{_fingerprint(root, unit)}"
    if (out / "manifest.json").is_file():
        return out
    with cache_dir_once(out) as tmp:
        if unit == MMLU:
            _write_mmlu(tmp, out, root)
        else:
            _write_task(tmp, out, LOCAL_TASKS.get(unit), root)
        manifest = {"harness": lm_eval.__version__, "data": str(root), "task": unit}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def _write_task(tmp: Path, final: Path, task: LocalTask, root: Path) -> str:
    docs = task.read(root)
    data = f"{task.name}.{task.split}.jsonl"
    _write_jsonl(tmp / data, docs)
    splits = {"training_split": None, "validation_split": None, "test_split": None}
    splits[f"{task.split}_split"] = task.split
    files = {task.split: str(final / data)}
    if task.train is not None:  # the standard task draws its few-shot examples from train
        _write_jsonl(tmp / f"{task.name}.train.jsonl", task.train(root))
        files["train"] = str(final / f"{task.name}.train.jsonl")
        splits |= {"training_split": "train", "fewshot_split": "train"}
    config = {
        "include": str(harness_tasks_dir() / task.standard_yaml),
        "task": task.harness_name,
        "tag": [],  # not in the standard task's tags (e.g. ai2_arc), which name hub tasks
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": files},
        **splits,
    }
    _write_yaml(tmp / f"{task.harness_name}.yaml", config)
    return data


def _write_mmlu(tmp: Path, final: Path, root: Path) -> None:
    subjects = task_data.mmlu_subjects(root)
    present = sorted({mmlu_category_of(s) for s in subjects}, key=MMLU_CATEGORIES.index)
    for subject in subjects:
        data = {}
        for split in ("test", "dev"):
            name = f"mmlu_{subject}.{split}.jsonl"
            _write_jsonl(tmp / name, task_data.mmlu(root, subject, split))
            data[split] = str(final / name)
        config = {
            "include": str(harness_tasks_dir() / "mmlu" / "default" / f"mmlu_{subject}.yaml"),
            "task": f"{LOCAL_PREFIX}mmlu_{subject}",
            "task_alias": subject,
            "tag": f"{LOCAL_PREFIX}mmlu_{mmlu_category_of(subject)}_tasks",
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": data},
        }
        _write_yaml(tmp / f"{LOCAL_PREFIX}mmlu_{subject}.yaml", config)
    aggregate = [{"metric": "acc", "weight_by_size": True}]
    for category in present:  # a category without subjects would be an empty group
        group = {
            "group": f"{LOCAL_PREFIX}mmlu_{category}",
            "group_alias": category,
            "task": [f"{LOCAL_PREFIX}mmlu_{category}_tasks"],
            "aggregate_metric_list": aggregate,
            "metadata": {"version": 2},
        }
        _write_yaml(tmp / f"_{LOCAL_PREFIX}mmlu_{category}.yaml", group)
    top = {
        "group": f"{LOCAL_PREFIX}mmlu",
        "task": [f"{LOCAL_PREFIX}mmlu_{c}" for c in present],
        "aggregate_metric_list": aggregate,
        "metadata": {"version": 2},
    }
    _write_yaml(tmp / f"_{LOCAL_PREFIX}mmlu.yaml", top)


def _write_jsonl(path: Path, docs: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")


def _write_yaml(path: Path, config: dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def _fingerprint(root: Path, unit: str) -> str:
    """Hash of the task's files, this module's and the readers' source, and the harness's
    version and location (the YAML includes its files by absolute path)."""
    import lm_eval

    h = hashlib.sha256(f"{lm_eval.__version__}:{harness_tasks_dir()}:{root.resolve()}".encode())
    for module in (__file__, task_data.__file__):
        h.update(Path(module).read_bytes())
    if unit == MMLU:
        files = sorted((root / "mmlu").glob("*/*.csv"))
        if not files:
            raise DataError(f"{root / 'mmlu'}: no csv files; set LOWBIT_DATA_DIR")
    else:
        files = [root / f for f in LOCAL_TASKS.get(unit).files]
    for file in files:
        if not file.is_file():
            raise DataError(f"{file}: no such file; set LOWBIT_DATA_DIR to the data directory")
        h.update(file.name.encode())
        h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()[:16]


def files_present(root: Path, name: str) -> bool:
    """Whether the local data for task ``name`` (a local name) is under ``root``."""
    base = name.removeprefix(LOCAL_PREFIX)
    if _is_mmlu(base):
        return (root / "mmlu" / "test").is_dir()
    return base in LOCAL_TASKS and all((root / f).is_file() for f in LOCAL_TASKS.get(base).files)


__all__ = [
    "LOCAL_TASKS",
    "MMLU",
    "MMLU_CATEGORIES",
    "SUITES",
    "LocalTask",
    "files_present",
    "local_names",
    "mmlu_category_of",
    "write_task_dirs",
]
