"""A tiny data directory in the layouts of ``../shared/data`` for the task tests (offline)."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

PIQA = [
    ({"goal": "How to open a jar?", "sol1": "Twist the lid.", "sol2": "Eat the lid."}, 0),
    ({"goal": "How to dry hair?", "sol1": "Pour water on it.", "sol2": "Use a towel."}, 1),
    ({"goal": "How to cool tea?", "sol1": "Wait a while.", "sol2": "Boil it again."}, 0),
]
WINOGRANDE = [
    {"sentence": "Ann gave Bo a book because _ was kind.", "option1": "Ann", "option2": "Bo",
     "answer": "1"},
    {"sentence": "The cup fell off the table because _ was tilted.", "option1": "cup",
     "option2": "table", "answer": "2"},
]  # fmt: skip
ARC = [
    {"query": "Question: What do plants need?", "choices": ["light", "sand", "iron"], "gold": 0},
    {"query": "Question: Which is a gas?", "choices": ["ice", "steam", "rock", "wood"], "gold": 1},
]
HELLASWAG = [
    ("Cooking: A man cuts onions. he", 2, ["sings.", "runs away.", "puts them in a pan.", "x."]),
    ("Running: A girl ties her shoes. she", 0, ["starts to run.", "eats.", "sleeps.", "y."]),
]
LAMBADA = ["the cat sat on the mat", "she opened the door and saw the garden"]
MMLU = {
    "abstract_algebra": [["What is 2+2?", "3", "4", "5", "6", "B"]],
    "world_religions": [["Which is a religion?", "Buddhism", "Granite", "Math", "Tea", "A"]],
}

GSM8K_TRAIN = [
    {"question": f"Tom has {n} apples and buys {n + 1} more. How many apples does he have?",
     "answer": f"He has {n} + {n + 1} = <<{n}+{n + 1}={2 * n + 1}>>{2 * n + 1} apples.\n"
               f"#### {2 * n + 1}"}
    for n in range(1, 8)
]  # fmt: skip
GSM8K_TEST = [
    {"question": "Ann has 3 pens and gets 4 more. How many pens?", "answer": "3+4=7\n#### 7"},
    {"question": "A box holds 2 cats and 2 dogs. How many pets?", "answer": "2+2=4\n#### 4"},
]


def make_task_data(root: Path) -> Path:
    """Write every local task's files under ``root`` (a few items each); returns ``root``."""
    (root / "piqa").mkdir(parents=True, exist_ok=True)
    _jsonl(root / "piqa" / "valid.jsonl", [d for d, _ in PIQA])
    (root / "piqa" / "valid-labels.lst").write_text("".join(f"{lab}\n" for _, lab in PIQA))
    (root / "winogrande").mkdir(exist_ok=True)
    _jsonl(root / "winogrande" / "dev.jsonl", WINOGRANDE)
    (root / "winogrande" / "dev-labels.lst").write_text(
        "".join(d["answer"] + "\n" for d in WINOGRANDE)
    )
    (root / "arc").mkdir(exist_ok=True)
    for name in ("arc_easy", "arc_challenge"):
        _jsonl(root / "arc" / f"{name}_test.mosaic.jsonl", ARC)
    (root / "hellaswag").mkdir(exist_ok=True)
    lines = []
    for ctx, gold, endings in HELLASWAG:
        lines += [ctx, str(gold), *endings]
    with bz2.open(root / "hellaswag" / "hellaswag_val_full.txt.bz2", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    (root / "lambada").mkdir(exist_ok=True)
    _jsonl(root / "lambada" / "lambada_test.jsonl", [{"text": t} for t in LAMBADA])
    (root / "gsm8k").mkdir(exist_ok=True)
    _jsonl(root / "gsm8k" / "train.jsonl", GSM8K_TRAIN)
    _jsonl(root / "gsm8k" / "test.jsonl", GSM8K_TEST)
    for split in ("dev", "test"):
        (root / "mmlu" / split).mkdir(parents=True, exist_ok=True)
        for subject, rows in MMLU.items():
            text = "".join(",".join(f'"{c}"' for c in row) + "\n" for row in rows)
            (root / "mmlu" / split / f"{subject}_{split}.csv").write_text(text)
    return root


def _jsonl(path: Path, docs: list[dict]) -> None:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
