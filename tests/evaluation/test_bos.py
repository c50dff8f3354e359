"""The BOS policy: resolved from the tokenizer (``auto`` as llama.cpp decides), carried by the
windows into the results and the reference-cache key, and scored so that the BOS position is
never a target: lowbit's perplexity with and without BOS equals a direct computation with the
model's plain forward."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit import api
from lowbit.api.evaluate import reference_key
from lowbit.errors import ArtefactError, ConfigError
from lowbit.evaluation.bos import NO_BOS, BosChoice, resolve_bos
from lowbit.evaluation.text import BuiltinText, load_text
from lowbit.models.sources import resolve_model

CTX, N = 48, 4
BOS_ID = 318  # "<s>" of the tiny tokenizer (tests/helpers/tiny.py)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bos-text") / "eval.txt"
    path.write_text(load_text(BuiltinText("python-docs", "eval"))[:20_000])
    return path


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize(
    ("model", "policy", "token_id"),
    [
        ("tiny_llama", "auto", None),  # a tokenizer with <s> that does not add it
        ("tiny_llama_adds_bos", "auto", BOS_ID),
        ("tiny_llama_no_bos_token", "auto", None),
        ("tiny_llama", "always", BOS_ID),
        ("tiny_llama_adds_bos", "never", None),
    ],
)
def test_policy_resolves_from_the_tokenizer(request, model, policy, token_id):
    choice = resolve_bos(_tokenizer(request.getfixturevalue(model)), policy, "the tokenizer")
    assert choice == BosChoice(policy, token_id)
    assert choice.prepend == (token_id is not None)
    assert choice.to_dict() == {"policy": policy, "bos": token_id is not None, "token_id": token_id}
    assert choice.cache_key == ("none" if token_id is None else f"prepend:{token_id}")


def test_always_without_a_bos_token_names_the_tokenizer(tiny_llama_no_bos_token):
    handle = resolve_model(str(tiny_llama_no_bos_token))
    with pytest.raises(ConfigError, match=r"--bos always needs a BOS token, but the tokenizer of"):
        api.text_windows(handle, api.TextConfig(ctx=CTX, bos="always"), calibration=False)
    with pytest.raises(ConfigError, match="use --bos auto or --bos never"):
        resolve_bos(handle.load_tokenizer(), "always", "x")


def test_an_unknown_policy_is_refused():
    with pytest.raises(ConfigError, match=r"unknown BOS policy 'yes' \(--bos\); use auto, always"):
        api.TextConfig(bos="yes")  # type: ignore[arg-type]


def _direct_perplexity(model_dir, text: str, bos: int | None) -> tuple[float, int]:
    """(perplexity, scored tokens) of the first N windows of ``text``, computed apart from
    lowbit: the model's own tokenizer and plain whole-model forward; each window is ``[bos]``
    and CTX−1 text tokens (or CTX text tokens), its targets are its tokens 1…CTX−1."""
    from transformers import AutoModelForCausalLM

    tok = _tokenizer(model_dir)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    span = CTX if bos is None else CTX - 1
    nll = []
    with torch.inference_mode():
        for k in range(N):
            chunk = ids[k * span : (k + 1) * span]
            x = torch.tensor([([] if bos is None else [bos]) + chunk])
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), dim=-1)
            target = x[0, 1:]
            if bos is not None:  # every text token is scored, the BOS position never
                assert target.tolist() == chunk
            nll.append(-logp.gather(1, target[:, None])[:, 0])
    flat = torch.cat(nll).double()
    return math.exp(float(flat.mean())), flat.numel()


@pytest.mark.parametrize(
    ("model", "policy", "prepend"),
    [
        ("tiny_llama", "never", False),
        ("tiny_llama", "auto", False),
        ("tiny_llama", "always", True),
        ("tiny_llama_adds_bos", "auto", True),
    ],
)
def test_perplexity_equals_a_direct_computation(
    request, text_file, tmp_path, model, policy, prepend
):
    path = request.getfixturevalue(model)
    handle = resolve_model(str(path))
    windows = api.text_windows(
        handle, api.TextConfig(str(text_file), CTX, N, bos=policy), calibration=False
    )
    text = text_file.read_text()
    bos = None
    if prepend:  # the BOS id as the tokenizer itself puts it first, when asked to
        bos = _tokenizer(path)(text)["input_ids"][0] if policy == "auto" else BOS_ID
        assert bos == BOS_ID
    assert windows.bos == BosChoice(policy, bos)
    assert windows.info["bos"] == {"policy": policy, "bos": prepend, "token_id": bos}
    assert windows.ids.shape == (N, CTX)
    direct, tokens = _direct_perplexity(path, text, bos)
    view = api.model_view(handle)
    alone = api.perplexity(view, windows)
    cached = api.evaluate(view, {}, windows, cache=tmp_path / "ref.lbref")["reference"]
    assert alone.tokens == cached.tokens == tokens == N * (CTX - 1)
    assert alone.perplexity == pytest.approx(direct, rel=1e-6)
    assert cached.perplexity == pytest.approx(direct, rel=1e-6)


def test_bos_changes_the_figures(tiny_llama, text_file):
    """The same text with and without BOS: different windows, different perplexity."""
    handle = resolve_model(str(tiny_llama))
    view = api.model_view(handle)
    ppl = {}
    for policy in ("never", "always"):
        cfg = api.TextConfig(str(text_file), CTX, N, bos=policy)
        ppl[policy] = api.perplexity(view, api.text_windows(handle, cfg, calibration=False))
    assert ppl["never"].perplexity != pytest.approx(ppl["always"].perplexity, rel=1e-4)


def test_a_reference_cached_with_the_other_choice_is_refused(tiny_llama, text_file, tmp_path):
    handle = resolve_model(str(tiny_llama))
    view = api.model_view(handle)
    windows = {
        policy: api.text_windows(
            handle, api.TextConfig(str(text_file), CTX, 2, bos=policy), calibration=False
        )
        for policy in ("always", "never")
    }
    rt = api.runtime()
    keys = {p: reference_key(view, w, rt) for p, w in windows.items()}
    assert keys["always"].bos == f"prepend:{BOS_ID}" and keys["never"].bos == "none"
    assert keys["always"].digest() != keys["never"].digest()  # default caches never collide
    path = tmp_path / "ref.lbref"
    api.reference_cache(view, windows["always"], rt, path=path)
    refused = f"bos: made with BOS 'prepend:{BOS_ID}', this evaluation uses 'none'"
    with pytest.raises(ArtefactError, match=refused):
        api.reference_cache(view, windows["never"], rt, path=path)
    with pytest.raises(ArtefactError, match=refused):
        api.evaluate(view, {}, windows["never"], rt, cache=path)


def test_sensitivity_probe_key_records_the_choice(tiny_llama):
    from lowbit.sensitivity.measured import reference_key as probe_key

    handle = resolve_model(str(tiny_llama))
    ids = torch.cat([torch.full((2, 1), BOS_ID), torch.randint(0, 300, (2, 15))], dim=1)
    rt = api.runtime()
    assert probe_key(handle, ids, rt).bos == "none" == NO_BOS.cache_key
    with_bos = probe_key(handle, ids, rt, BosChoice("auto", BOS_ID))
    assert with_bos.bos == f"prepend:{BOS_ID}"
