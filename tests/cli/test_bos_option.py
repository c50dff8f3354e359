"""``--bos auto|always|never`` on the commands that cut text windows: the choice is resolved
from the model's tokenizer, stated in every result and recorded in the reference cache; an
impossible or unknown choice is a clear error that writes nothing."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_commands import lowbit

BOS = {"policy": "auto", "bos": True, "token_id": 318}  # "<s>" of the tiny tokenizer
TEXT = ["--ctx", "48", "--windows", "2"]


@pytest.mark.parametrize(
    ("model", "args", "expect"),
    [
        ("tiny_llama", [], {"policy": "auto", "bos": False, "token_id": None}),
        ("tiny_llama_adds_bos", [], BOS),
        ("tiny_llama", ["--bos", "always"], {**BOS, "policy": "always"}),
        ("tiny_llama_adds_bos", ["--bos", "never"], {"policy": "never", "bos": False,
                                                     "token_id": None}),
    ],
)  # fmt: skip
def test_eval_states_the_choice(request, tmp_path, corpus, model, args, expect):
    path = request.getfixturevalue(model)
    run = lowbit("eval", str(path), "--eval-text", str(corpus[0]), *TEXT, *args, "-o", "e.json",
                 cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["data"]["eval"]["bos"] == expect
    assert result["config"]["eval"]["bos"] == expect["policy"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bos", "always"], "--bos always needs a BOS token, but the tokenizer of"),
        (["--bos", "maybe"], "unknown BOS policy 'maybe' (--bos); use auto, always, never"),
    ],
)
def test_impossible_or_unknown_choice_is_a_clear_error(
    tiny_llama_no_bos_token, tmp_path, corpus, args, message
):
    before = set(tmp_path.iterdir())
    run = lowbit("eval", str(tiny_llama_no_bos_token), "--eval-text", str(corpus[0]), *TEXT,
                 *args, "-o", "e.json", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert message in " ".join(run.stderr.split())
    assert "Traceback" not in run.stderr
    assert set(tmp_path.iterdir()) == before


def test_run_states_the_choice_for_both_texts(tiny_llama_adds_bos, tmp_path, corpus):
    ev, ca = corpus
    run = lowbit("run", str(tiny_llama_adds_bos), "--eval-text", str(ev), "--calib-text", str(ca),
                 *TEXT, "--calib-windows", "2", "-o", "r.json", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["data"]["eval"]["bos"] == result["data"]["calibration"]["bos"] == BOS


def test_compare_states_the_choice(tiny_llama_adds_bos, tmp_path, corpus):
    model = str(tiny_llama_adds_bos)
    run = lowbit("compare", model, model, "--eval-text", str(corpus[0]), *TEXT, "--bos", "never",
                 "-o", "c.json", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    text = json.loads((tmp_path / "c.json").read_text())["text"]
    assert text["windows"]["bos"] == {"policy": "never", "bos": False, "token_id": None}
    assert text["config"]["bos"] == "never"


def test_sensitivity_states_the_choice_and_keys_its_reference(
    tiny_llama_adds_bos, tmp_path, corpus, monkeypatch
):
    from lowbit.evaluation.refcache import open_reference

    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    run = lowbit("sensitivity", str(tiny_llama_adds_bos), "--bits", "4", "--group-size", "16",
                 "--calib-text", str(corpus[1]), "--calib-windows", "2", "--ctx", "32",
                 "--probe-ctx", "16", "-o", "s.json", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    table = json.loads((tmp_path / "s.json").read_text())
    assert table["probe"]["calibration"]["bos"] == BOS
    (ref,) = (tmp_path / "cache" / "references").glob("*.lbref")
    with open_reference(ref) as cache:
        assert cache.key.bos == "prepend:318"
        assert int(cache.window(0).tokens[0]) == 318  # the probe windows start with BOS
