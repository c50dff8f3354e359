"""What lowbit knows, for ``lowbit ls``: read from the registries, never written twice."""

from __future__ import annotations


def catalog(what: str) -> list[tuple[str, str]]:
    if what == "formats":
        from lowbit.formats import FORMATS

        return [(name, _first_line(cls)) for name, cls in FORMATS]
    if what == "algorithms":
        from lowbit.algorithms import ALGORITHMS

        return [(name, _first_line(cls)) for name, cls in ALGORITHMS]
    if what == "architectures":
        from lowbit.models.arch import ARCHITECTURES

        return [(name, ", ".join(spec.model_types)) for name, spec in ARCHITECTURES]
    if what == "hardware":
        from lowbit.perf.hardware import hardware_registry

        return [
            (name, f"{hw.name}: {hw.memory_bytes / 1e9:.0f} GB, {hw.bandwidth / 1e9:.0f} GB/s")
            for name, hw in hardware_registry()
        ] + [("this", "the current device, measured by micro-benchmarks (cached)")]
    if what == "tasks":
        from lowbit.evaluation.task_defs import (
            LOCAL_TASKS,
            MMLU,
            MMLU_CATEGORIES,
            MMLU_FAMILY,
            SUITES,
        )

        rows = [
            (name, f"{t.family}; local {t.split} split ({t.files[0]})") for name, t in LOCAL_TASKS
        ]
        rows.append((MMLU, f"{MMLU_FAMILY}: 57 subjects in {len(MMLU_CATEGORIES)} categories"))
        rows += [(f"{MMLU}_{c}", f"MMLU category {c}") for c in MMLU_CATEGORIES]
        rows += [(name, "suite: " + ", ".join(tasks)) for name, tasks in SUITES.items()]
        return rows + [
            ("FILE.yaml", "a task of your own in the harness's format (or --include-path DIR)"),
            ("…", "any other lm-evaluation-harness task (reads the hub)"),
        ]
    if what == "models":
        from lowbit.models.builtin import BUILTIN_MODELS

        return [(name, m.description) for name, m in BUILTIN_MODELS]
    from lowbit.evaluation.builtin_text import __doc__ as text_doc
    from lowbit.evaluation.text import BUILTIN_TEXTS

    return [(f"builtin:{t}", _first_line_of(text_doc or "")) for t in BUILTIN_TEXTS]


def _first_line(obj: object) -> str:
    return _first_line_of(obj.__doc__ or "")


def _first_line_of(doc: str) -> str:
    return doc.strip().splitlines()[0] if doc.strip() else ""
