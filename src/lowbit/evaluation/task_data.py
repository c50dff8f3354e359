"""Readers that turn the published files of the standard tasks into the documents the
lm-evaluation-harness's own task definitions expect (the fields of their hub datasets).

Each reader checks every record and names the file and line of the first bad one. The layouts
read are those of ``../shared/data`` (see its README): PIQA ``valid.jsonl`` + labels, WinoGrande
``dev.jsonl`` (+ labels, checked to agree), ARC in the MosaicML layout, GSM8K's
``{question, answer}``, HellaSwag in llama.cpp's six-line layout, LAMBADA (OpenAI)
``{"text"}`` lines and MMLU's header-less csv files.
"""

from __future__ import annotations

import bz2
import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lowbit.errors import DataError

Doc = dict[str, Any]


def _open_text(path: Path, newline: str | None = None) -> Iterator[str]:
    if not path.is_file():
        raise DataError(f"{path}: no such file; set LOWBIT_DATA_DIR to the data directory")
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8", newline=newline) as fh:  # type: ignore[operator]
        yield from fh


def read_jsonl(path: Path, fields: tuple[str, ...]) -> list[Doc]:
    """Every line of ``path`` as a JSON object holding ``fields``."""
    docs = []
    for n, line in enumerate(_open_text(path), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(doc, dict):
            raise DataError(f"{path}:{n}: expected a JSON object, got {type(doc).__name__}")
        missing = [f for f in fields if f not in doc]
        if missing:
            raise DataError(
                f"{path}:{n}: missing field {', '.join(map(repr, missing))}; each line must "
                f"hold {', '.join(fields)}"
            )
        docs.append(doc)
    if not docs:
        raise DataError(f"{path}: no records")
    return docs


def read_labels(path: Path, count: int, allowed: tuple[str, ...]) -> list[str]:
    """One label per line, exactly ``count`` of them, each one of ``allowed``."""
    labels = []
    for n, line in enumerate(_open_text(path), start=1):
        label = line.strip()
        if not label:
            continue
        if label not in allowed:
            raise DataError(f"{path}:{n}: label {label!r} is not one of {', '.join(allowed)}")
        labels.append(label)
    if len(labels) != count:
        raise DataError(
            f"{path}: {len(labels)} labels for {count} records; the files must pair line by line"
        )
    return labels


def piqa(root: Path) -> list[Doc]:
    """PIQA validation: ``goal``, ``sol1``, ``sol2`` and the integer ``label``."""
    docs = read_jsonl(root / "piqa" / "valid.jsonl", ("goal", "sol1", "sol2"))
    labels = read_labels(root / "piqa" / "valid-labels.lst", len(docs), ("0", "1"))
    return [{**d, "label": int(lab)} for d, lab in zip(docs, labels, strict=True)]


def winogrande(root: Path) -> list[Doc]:
    """WinoGrande dev: ``sentence``, ``option1``, ``option2``, ``answer`` ("1" or "2")."""
    path = root / "winogrande" / "dev.jsonl"
    docs = read_jsonl(path, ("sentence", "option1", "option2", "answer"))
    labels = read_labels(root / "winogrande" / "dev-labels.lst", len(docs), ("1", "2"))
    for n, (doc, label) in enumerate(zip(docs, labels, strict=True), start=1):
        if str(doc["answer"]) != label:
            raise DataError(f"{path}:{n}: answer {doc['answer']!r} disagrees with label {label}")
        if "_" not in doc["sentence"]:
            raise DataError(f"{path}:{n}: the sentence has no '_' blank to fill")
    return [{**d, "answer": str(d["answer"])} for d in docs]


def arc(path: Path) -> list[Doc]:
    """ARC (MosaicML layout ``query``/``choices``/``gold``) in the hub layout: ``question``,
    ``choices`` {``text``, ``label``} and ``answerKey``."""
    out = []
    for n, doc in enumerate(read_jsonl(path, ("query", "choices", "gold")), start=1):
        query, choices, gold = doc["query"], doc["choices"], doc["gold"]
        if not str(query).startswith("Question: "):
            raise DataError(f"{path}:{n}: query does not start with 'Question: '")
        if not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise DataError(f"{path}:{n}: gold {gold!r} is not an index into the choices")
        labels = [chr(ord("A") + i) for i in range(len(choices))]
        out.append(
            {
                "question": query.removeprefix("Question: "),
                "choices": {"text": list(choices), "label": labels},
                "answerKey": labels[gold],
            }
        )
    return out


def hellaswag(root: Path) -> list[Doc]:
    """HellaSwag validation from llama.cpp's layout (context, gold index, four endings).

    The context line is ``activity_label: ctx_a ctx_b``, split at the first ': '. The file does
    not mark where ``ctx_a`` ends; ``ctx_b`` is taken as the unfinished sentence after the last
    sentence end when it starts in lower case (as in the hub data, where it is the start of the
    sentence the endings complete), so that the harness's ``process_docs`` capitalises it as it
    does for the hub version; otherwise ``ctx_b`` is empty.
    """
    path = root / "hellaswag" / "hellaswag_val_full.txt.bz2"
    lines = [line.rstrip("\n") for line in _open_text(path)]
    if len(lines) % 6:
        raise DataError(f"{path}: {len(lines)} lines is not a multiple of 6 (one item = 6 lines)")
    docs = []
    for i in range(0, len(lines), 6):
        context, gold, endings = lines[i], lines[i + 1], lines[i + 2 : i + 6]
        label, sep, ctx = context.partition(": ")
        if not sep:
            raise DataError(f"{path}:{i + 1}: context has no 'activity: ' prefix")
        if gold not in ("0", "1", "2", "3"):
            raise DataError(f"{path}:{i + 2}: gold index {gold!r} is not 0-3")
        ctx_a, ctx_b = split_context(ctx)
        docs.append(
            {"activity_label": label, "ctx_a": ctx_a, "ctx_b": ctx_b, "endings": endings,
             "label": gold}
        )  # fmt: skip
    return docs


_SENTENCE_END = re.compile(r"[.!?]\s+(?=\S)")


def split_context(ctx: str) -> tuple[str, str]:
    """(ctx_a, ctx_b): ``ctx_b`` is the lower-case fragment after the last sentence end."""
    ends = list(_SENTENCE_END.finditer(ctx))
    if not ends:
        return (ctx, "") if not ctx[:1].islower() else ("", ctx)
    cut = ends[-1].end()
    tail = ctx[cut:]
    if tail[:1].islower():
        return ctx[: ends[-1].start() + 1], tail
    return ctx, ""


def lambada(root: Path) -> list[Doc]:
    """LAMBADA (OpenAI preprocessing): ``text``, whose last word is the target."""
    path = root / "lambada" / "lambada_test.jsonl"
    docs = read_jsonl(path, ("text",))
    for n, doc in enumerate(docs, start=1):
        if " " not in str(doc["text"]).strip():
            raise DataError(f"{path}:{n}: text has a single word; there is no context")
    return [{"text": d["text"]} for d in docs]


def gsm8k(root: Path, split: str) -> list[Doc]:
    """GSM8K (OpenAI release) ``question`` and ``answer``, whose last line is ``#### N``."""
    path = root / "gsm8k" / f"{split}.jsonl"
    docs = read_jsonl(path, ("question", "answer"))
    for n, doc in enumerate(docs, start=1):
        if "#### " not in str(doc["answer"]):
            raise DataError(f"{path}:{n}: the answer has no final '#### N' line")
    return [{"question": d["question"], "answer": d["answer"]} for d in docs]


def mmlu_subjects(root: Path) -> list[str]:
    """The subjects with a test file, from ``mmlu/test/<subject>_test.csv``."""
    test_dir = root / "mmlu" / "test"
    if not test_dir.is_dir():
        raise DataError(f"{test_dir}: no such directory; set LOWBIT_DATA_DIR to the data directory")
    return sorted(p.name.removesuffix("_test.csv") for p in test_dir.glob("*_test.csv"))


def mmlu(root: Path, subject: str, split: str) -> list[Doc]:
    """One MMLU subject split (``dev``, ``val`` or ``test``) as ``question``, ``subject``,
    ``choices`` (4) and the integer ``answer``."""
    path = root / "mmlu" / split / f"{subject}_{split}.csv"
    docs = []
    for n, row in enumerate(csv.reader(_open_text(path, newline="")), start=1):  # rows
        if not row:
            continue
        if len(row) != 6 or row[5] not in ("A", "B", "C", "D"):
            raise DataError(
                f"{path}: row {n}: expected 6 fields (question, A, B, C, D, answer letter), "
                f"got {len(row)}" + (f" ending in {row[-1]!r}" if row else "")
            )
        docs.append(
            {
                "question": row[0],
                "subject": subject,
                "choices": row[1:5],
                "answer": "ABCD".index(row[5]),
            }
        )
    if not docs:
        raise DataError(f"{path}: no records")
    return docs
