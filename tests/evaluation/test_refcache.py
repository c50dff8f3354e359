"""The cached reference: exact fields, the decode bound, agreement of cached scores with the exact
fp32 reference, and refusals (wrong key, truncated file, interrupted writer)."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

from lowbit.errors import ArtefactError
from lowbit.evaluation import refcache as rc
from lowbit.evaluation.metrics import Accumulator, _finish


def _score(logp, ref_logp, target, acc):
    """The exact scoring with the reference's full log-probabilities in memory (what the
    evaluator computed before the cache existed)."""
    lp_target = logp.gather(1, target[:, None])[:, 0]
    acc.nll.append(-lp_target)
    ref_p = ref_logp.exp()
    acc.kl.append((ref_p * (ref_logp - logp)).sum(-1).clamp_min_(0.0))
    acc.agree.append(ref_logp.argmax(-1) == logp.argmax(-1))
    ref_target = ref_logp.gather(1, target[:, None])[:, 0]
    acc.dp.append(lp_target.exp() - ref_target.exp())


KEY = rc.ReferenceKey(
    model="m" * 16, text="t" * 16, ctx=9, windows=3, selection="consecutive", bos="none",
    dtype="float32",
)  # fmt: skip


def _logits(T: int, V: int, gen: torch.Generator) -> torch.Tensor:
    """Realistic reference logits (T, V): a Gaussian bulk and a ranked head of 64 tokens, so
    the top-1 probability spreads from ~0.1 to ~0.95 over a long tail."""
    x = torch.randn(T, V, generator=gen) * (1.5 + 2.0 * torch.rand(T, 1, generator=gen))
    head = min(64, V // 2)
    idx = torch.stack([torch.randperm(V, generator=gen)[:head] for _ in range(T)])
    lead = -1 + 9 * torch.rand(T, 1, generator=gen)
    slope = 1 + 3 * torch.rand(T, 1, generator=gen)
    rank = torch.log(torch.arange(1, head + 1.0))
    values = torch.logsumexp(x, -1, keepdim=True) + lead - slope * rank
    return x.scatter_(1, idx, values + 0.3 * torch.randn(T, head, generator=gen))


def _write(path, key, logps, windows):
    with rc.write_reference(path, key, logps[0].shape[-1]) as writer:
        for logp, tokens in zip(logps, windows, strict=True):
            writer.add(logp, tokens)


@pytest.fixture
def small(tmp_path):
    gen = torch.Generator().manual_seed(0)
    V = 300
    windows = torch.randint(0, V, (KEY.windows, KEY.ctx), generator=gen)
    logps = [torch.log_softmax(_logits(KEY.ctx - 1, V, gen), -1) for _ in windows]
    path = tmp_path / "ref.lbref"
    _write(path, KEY, logps, windows)
    return path, logps, windows


def test_round_trip_keeps_the_header_and_the_exact_fields(small):
    path, logps, windows = small
    with rc.open_reference(path, KEY, vocab=300) as cache:
        assert cache.key == KEY and len(cache) == 3 and cache.vocab == 300
        assert cache.header["encoding"] == rc.ENCODING
        for w, ref in enumerate(cache):
            exact = logps[w]
            target = windows[w, 1:]
            assert torch.equal(ref.tokens, windows[w])
            assert torch.equal(ref.target, target)
            assert torch.equal(ref.argmax, exact.argmax(-1))
            assert torch.equal(ref.target_logp, exact.gather(1, target[:, None])[:, 0])
            assert ref.logp.dtype == torch.float32 and ref.logp.shape == exact.shape
            assert torch.allclose(ref.logp.exp().sum(-1), torch.ones(KEY.ctx - 1), atol=1e-5)
    size = path.stat().st_size
    assert size % 64 == (rc._record_bytes(KEY.ctx, 300) * 3) % 64  # body starts 64-aligned
    assert size - 3 * rc._record_bytes(KEY.ctx, 300) < 4096


def test_decode_error_is_within_the_stated_bound():
    gen = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(_logits(64, 4096, gen), -1)
    logp[0, :10] = -torch.inf  # probability exactly zero survives
    enc = rc.encode_logprobs(logp)
    top, span = torch.from_numpy(enc["top_logp"]), torch.from_numpy(enc["span"])
    k = torch.log1p(span[:, None] / rc.A) / rc.LEVELS
    raw = top[:, None] - rc.A * torch.expm1(torch.from_numpy(enc["codes"].astype("f4")) * k)
    bound = rc.decode_error_bound(logp)
    finite = torch.isfinite(logp)
    slack = 1e-6 * (1 + logp.abs())  # float32 arithmetic of encoder and decoder
    err = (raw - logp).abs()
    assert bool((err <= bound * 1.01 + slack)[finite].all())
    decoded = rc.decode_logprobs(top, span, enc["codes"])
    assert bool(torch.isneginf(decoded[0, :10]).all())
    shift = torch.where(finite, bound, 0).amax(-1, keepdim=True)  # renormalisation, at most
    assert bool(((decoded - logp).abs() <= bound * 1.01 + shift + slack)[finite].all())
    # the typical figures of the module docstring: R = 30 nats
    beta = math.expm1(math.log1p(30 / rc.A) / (2 * rc.LEVELS))
    assert beta == pytest.approx(2.6e-5, rel=0.02)
    assert (30 + rc.A) * beta == pytest.approx(8e-4, rel=0.02)


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    """Two windows of 128 predicted tokens over a 49,152-entry vocabulary, cached and read."""
    gen = torch.Generator().manual_seed(2)
    V, key = 49152, dataclasses.replace(KEY, ctx=129, windows=2)
    logits = [_logits(key.ctx - 1, V, gen) for _ in range(key.windows)]
    windows = torch.randint(0, V, (key.windows, key.ctx), generator=gen)
    path = tmp_path_factory.mktemp("ref") / "ref.lbref"
    _write(path, key, [torch.log_softmax(x, -1) for x in logits], windows)
    with rc.open_reference(path, key, vocab=V) as cache:
        cached = list(cache)
    return logits, windows, cached


@pytest.mark.parametrize("noise", [0.07, 0.22, 0.75, 1.8])  # mean KL ~1e-3, 1e-2, 1e-1, 1
def test_cached_scores_match_the_exact_reference(realistic, noise):
    logits, windows, cached = realistic
    gen = torch.Generator().manual_seed(int(noise * 100))
    exact, from_cache = Accumulator(), Accumulator()
    for x, tokens, ref in zip(logits, windows, cached, strict=True):
        logp = torch.log_softmax(x + noise * torch.randn(x.shape, generator=gen), -1)
        target = tokens[1:]
        _score(logp, torch.log_softmax(x, -1), target, exact)
        rc.score_cached(logp, ref, target, from_cache)
    a, b = _finish(exact), _finish(from_cache)
    assert 3e-4 < a.kl["mean"] / noise**2 < 2  # the noise levels span the intended KL range
    assert b.kl["mean"] == pytest.approx(a.kl["mean"], rel=1e-4)
    assert b.top1_agreement == a.top1_agreement
    assert b.delta_p == a.delta_p
    assert b.nll == a.nll
    assert torch.equal(torch.cat(from_cache.agree), torch.cat(exact.agree))
    assert torch.equal(torch.cat(from_cache.dp), torch.cat(exact.dp))
    print(f"noise {noise}: KL {a.kl['mean']:.3e}, rel err {b.kl['mean'] / a.kl['mean'] - 1:.1e}")


def test_reference_nll_is_exact(realistic):
    logits, windows, cached = realistic
    acc = Accumulator()
    for ref in cached:
        rc.score_reference(ref, acc)
    exact = torch.cat(
        [
            -torch.log_softmax(x, -1).gather(1, t[1:, None])[:, 0]
            for x, t in zip(logits, windows, strict=True)
        ]
    )
    assert torch.equal(torch.cat(acc.nll), exact)


@pytest.mark.parametrize(
    ("field", "value"),
    [("model", "x" * 16), ("text", "y" * 16), ("ctx", 17), ("windows", 4), ("dtype", "bfloat16"),
     ("bos", "prepend"), ("selection", "random")],
)  # fmt: skip
def test_a_mismatched_key_is_refused_naming_the_field(small, field, value):
    path = small[0]
    with pytest.raises(ArtefactError, match=rf"{re.escape(str(path))}.*{field}: .*{value}.*Delete"):
        rc.open_reference(path, dataclasses.replace(KEY, **{field: value}))


def test_another_device_or_vocabulary(small):
    path = small[0]
    on_gpu = dataclasses.replace(KEY, device="cuda")
    rc.open_reference(path, on_gpu).close()
    assert rc.cache_path(path.parent, on_gpu) == rc.cache_path(path.parent, KEY)
    assert rc.cache_path(path.parent, KEY) != rc.cache_path(
        path.parent, dataclasses.replace(KEY, ctx=17)
    )
    with pytest.raises(ArtefactError, match="vocab: .*300.*512"):
        rc.open_reference(path, KEY, vocab=512)


def test_a_candidate_on_other_tokens_is_refused(small):
    path, logps, windows = small
    with rc.open_reference(path, KEY) as cache:
        ref = cache.window(0)
    with pytest.raises(ArtefactError, match="tokens differ"):
        rc.score_cached(logps[0], ref, (windows[0, 1:] + 1) % 300, Accumulator())
    with pytest.raises(ArtefactError, match="do not match"):
        rc.score_cached(logps[0][:, :-1], ref, windows[0, 1:], Accumulator())


def test_truncated_or_foreign_files_are_refused(small, tmp_path):
    path = small[0]
    data = path.read_bytes()
    short = tmp_path / "short.lbref"
    short.write_bytes(data[:-100])
    with pytest.raises(ArtefactError, match=r"short\.lbref.*truncated.*delete it"):
        rc.open_reference(short, KEY)
    foreign = tmp_path / "foreign.lbref"
    foreign.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(ArtefactError, match="not a lowbit reference cache"):
        rc.open_reference(foreign, KEY)
    broken = tmp_path / "broken.lbref"
    broken.write_bytes(data[:20])
    with pytest.raises(ArtefactError, match="damaged header"):
        rc.open_reference(broken, KEY)


def test_an_interrupted_writer_leaves_nothing(tmp_path):
    path = tmp_path / "ref.lbref"
    logp = torch.log_softmax(torch.randn(KEY.ctx - 1, 50), -1)
    tokens = torch.zeros(KEY.ctx, dtype=torch.long)
    with pytest.raises(RuntimeError, match="interrupted"), rc.write_reference(path, KEY, 50) as w:
        w.add(logp, tokens)
        raise RuntimeError("interrupted")
    with (
        pytest.raises(ArtefactError, match="1 of 3 windows"),
        rc.write_reference(path, KEY, 50) as w,
    ):
        w.add(logp, tokens)
    assert list(tmp_path.iterdir()) == []


def test_nan_log_probs_are_refused(tmp_path):
    logp = torch.log_softmax(torch.randn(KEY.ctx - 1, 50), -1)
    logp[2, 3] = torch.nan
    with (
        pytest.raises(ArtefactError, match="NaN"),
        rc.write_reference(tmp_path / "ref.lbref", KEY, 50) as writer,
    ):
        writer.add(logp, torch.zeros(KEY.ctx, dtype=torch.long))
    assert list(tmp_path.iterdir()) == []
