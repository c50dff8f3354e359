"""Readers of the local task files: documents in the harness's layouts, errors by file and line,
and the real files' item counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbit.errors import DataError
from lowbit.evaluation import task_data
from tests.conftest import require_shared_data
from tests.helpers.taskdata import make_task_data


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return make_task_data(tmp_path / "data")


def test_documents_take_the_hub_layouts(root: Path) -> None:
    piqa = task_data.piqa(root)
    assert piqa[1] == {
        "goal": "How to dry hair?", "sol1": "Pour water on it.", "sol2": "Use a towel.", "label": 1
    }  # fmt: skip
    arc = task_data.arc(root / "arc" / "arc_easy_test.mosaic.jsonl")
    assert arc[1] == {
        "question": "Which is a gas?",
        "choices": {"text": ["ice", "steam", "rock", "wood"], "label": ["A", "B", "C", "D"]},
        "answerKey": "B",
    }
    hs = task_data.hellaswag(root)
    assert hs[0]["activity_label"] == "Cooking" and hs[0]["ctx_a"] == "A man cuts onions."
    assert hs[0]["ctx_b"] == "he"
    assert hs[0]["label"] == "2" and len(hs[0]["endings"]) == 4
    mmlu = task_data.mmlu(root, "abstract_algebra", "test")
    assert mmlu == [
        {"question": "What is 2+2?", "subject": "abstract_algebra",
         "choices": ["3", "4", "5", "6"], "answer": 1}
    ]  # fmt: skip
    assert task_data.mmlu_subjects(root) == ["abstract_algebra", "world_religions"]
    assert task_data.winogrande(root)[1]["answer"] == "2"
    assert task_data.lambada(root)[0] == {"text": "the cat sat on the mat"}


def test_missing_field_is_named_by_file_and_line(root: Path) -> None:
    path = root / "piqa" / "valid.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({"goal": "g", "sol1": "a"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"valid\.jsonl:2: missing field 'sol2'"):
        task_data.piqa(root)


def test_bad_labels_and_rows_are_named(root: Path) -> None:
    (root / "piqa" / "valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(DataError, match="2 labels for 3 records"):
        task_data.piqa(root)
    (root / "winogrande" / "dev-labels.lst").write_text("2\n2\n")
    with pytest.raises(DataError, match=r"dev\.jsonl:1: answer '1' disagrees with label 2"):
        task_data.winogrande(root)
    (root / "mmlu" / "test" / "abstract_algebra_test.csv").write_text('"q","a","b","c","d","E"\n')
    with pytest.raises(DataError, match="row 1: expected 6 fields"):
        task_data.mmlu(root, "abstract_algebra", "test")
    with pytest.raises(DataError, match="no such file"):
        task_data.lambada(root / "nowhere")


def test_hellaswag_layout_is_checked(root: Path, tmp_path: Path) -> None:
    import bz2

    bad = tmp_path / "bad" / "hellaswag"
    bad.mkdir(parents=True)
    with bz2.open(bad / "hellaswag_val_full.txt.bz2", "wt") as fh:
        fh.write("no label here\n7\na\nb\nc\nd\n")
    with pytest.raises(DataError, match=r"bz2:1: context has no 'activity: ' prefix"):
        task_data.hellaswag(tmp_path / "bad")


def test_real_files_have_their_published_sizes() -> None:
    root = require_shared_data()
    assert len(task_data.piqa(root)) == 1838
    assert len(task_data.winogrande(root)) == 1267
    assert len(task_data.arc(root / "arc" / "arc_easy_test.mosaic.jsonl")) == 2376
    assert len(task_data.arc(root / "arc" / "arc_challenge_test.mosaic.jsonl")) == 1172
    assert len(task_data.hellaswag(root)) == 10042
    assert len(task_data.lambada(root)) == 5153
    subjects = task_data.mmlu_subjects(root)
    assert len(subjects) == 57
    assert sum(len(task_data.mmlu(root, s, "test")) for s in subjects) == 14042


HUB_HELLASWAG = [  # hub-layout items (Rowan/hellaswag fields) of the kinds the file holds
    {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
     "ctx_b": "he", "endings": ["is using wrap.", "is ripping tiles off.", "holds a cube.",
                                "starts pulling up roofing."], "label": "3"},
    {"activity_label": "Clean and jerk", "ctx_a": "A lady walks to a barbell. She bends down.",
     "ctx_b": "the lady", "endings": ["swings.", "pulls.", "stands.", "lifts the weight."],
     "label": "3"},
    {"activity_label": "Home and Garden", "ctx_a": "[header] How to dry a rug. [title] Hang it.",
     "ctx_b": "", "endings": ["Wait. [step] Then fold it.", "b.", "c.", "d."], "label": "0"},
]  # fmt: skip


def test_hellaswag_prompts_equal_the_standard_tasks(tmp_path: Path) -> None:
    """llama.cpp's file joins ``activity_label: ctx_a ctx_b``; read back, the harness's own
    ``process_docs`` must give the same query, choices and gold as for the hub item."""
    import bz2

    from datasets import Dataset
    from lm_eval.tasks.hellaswag.utils import process_docs

    lines = []
    for d in HUB_HELLASWAG:
        ctx = d["ctx_a"] + (" " + d["ctx_b"] if d["ctx_b"] else "")
        lines += [f"{d['activity_label']}: {ctx}", d["label"], *d["endings"]]
    (tmp_path / "hellaswag").mkdir()
    with bz2.open(tmp_path / "hellaswag" / "hellaswag_val_full.txt.bz2", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    ours = process_docs(Dataset.from_list(task_data.hellaswag(tmp_path)))
    hub = process_docs(Dataset.from_list(HUB_HELLASWAG))
    for a, b in zip(ours, hub, strict=True):
        assert (a["query"], a["choices"], a["gold"]) == (b["query"], b["choices"], b["gold"])
    assert hub[0]["query"].endswith("roof. He")
