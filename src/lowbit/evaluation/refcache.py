"""The reference's per-token log-probabilities, computed once and cached on disk.

One model in memory: the reference is run once over the evaluation windows and its
log-probabilities are written here; candidates are then scored one after another against the
file. A file is keyed by what the numbers depend on (:class:`ReferenceKey`: model and text
fingerprints, ctx, windows and their selection, the resolved BOS choice, compute dtype) and
refused, naming the field and the fix, when any of these differ from what the caller expects.

Per predicted token (``T = ctx - 1`` per window, vocabulary ``V``) a file holds the argmax
token (int32) and the target's log-prob (float32) exactly, so top-1 agreement, Δp and the
reference perplexity are exact, and the full-vocabulary log-probs in 2 bytes an entry. llama.cpp's
``--kl-divergence-base`` file codes them linearly (uint16) over the top 16 nats. Here the code is
*log-companded* and anchored at the token's top log-prob, stored exactly with the span
``R = top - min`` (nats): with ``x = top - logp``, ``code = round(L ln(1 + x/a) / ln(1 + R/a))``,
``a = 1`` nat, ``L = 65534``; code 65535 is a probability of exactly zero. Nothing is clamped.

Precision: an entry ``x`` nats below the top decodes within ``(x + a) β`` nats,
``β = exp(ln(1 + R/a) / 2L) - 1`` (:func:`decode_error_bound`), before the decoder renormalises
(``log_softmax``), which shifts all entries by a probability-weighted mean of those errors. For
``R = 30`` nats, ``β = 2.6e-5``: the top is exact, entries within 1 nat of it are within 5e-5,
``x = 10`` within 2.9e-4, the far tail within 8e-4; a linear code is within 2.3e-4 everywhere.

Why companded: a cached KL(P_ref ‖ P_model) errs by ``Σ_i p_i ε_i (log p_i - log q_i)`` to first
order, so resolution is needed where ``p_i`` is large, the top few nats; a linear code spreads it
over all 20-40. The error is random and averages as ``1/sqrt(tokens)``, so it matters at low KL.
Measured (relative error of mean KL; synthetic reference logits, V = 49,152, Gaussian bulk and a
ranked head, median top-1 probability 0.65; candidates ``logits + s * noise``; 256 tokens; rms
and max over 18 draws), linear over [min, 0] → this code:

    mean KL 4.7e-4: rms 1.6e-4, max 2.6e-4 → rms 3.6e-5, max 7.3e-5
    mean KL 1.4e-3: rms 9.6e-5, max 2.0e-4 → rms 2.7e-5, max 5.5e-5
    mean KL 1.4e-2: rms 2.9e-5, max 5.2e-5 → rms 6.2e-6, max 1.3e-5
    mean KL 1.7e-1: rms 1.0e-5, max 1.9e-5 → rms 1.2e-6, max 2.4e-6
    mean KL 9.8e-1: rms 2.8e-6, max 5.2e-6 → rms 5.5e-7, max 1.0e-6

Storing the top 4 entries exactly as well gained too little to be worth 32 bytes a token.

File layout (little-endian), ``.lbref``::

    0   b"LOWBITRC"                 magic
    8   uint32  version (1)
    12  uint32  n, bytes of the JSON header
    16  JSON header (UTF-8), padded with spaces so the body starts at a multiple of 64
    body: one record per window, each  4*ctx + 16*T + 2*T*V  bytes:
        tokens       int32   (ctx,)   the window's token ids (targets are tokens[1:])
        argmax       int32   (T,)     reference argmax token
        target_logp  float32 (T,)     exact log-prob of the target token
        top_logp     float32 (T,)     exact log-prob of the argmax token
        span         float32 (T,)     R = top - min finite log-prob, nats
        codes        uint16  (T, V)   companded log-probs

The file size must equal the body offset plus ``windows`` records exactly. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import torch

from lowbit import __version__
from lowbit._io import atomic_path, library_versions
from lowbit.errors import ArtefactError

MAGIC = b"LOWBITRC"
VERSION = 1
A = 1.0  # nats: the code is linear in x below a, logarithmic above
LEVELS = 65534  # codes 0..LEVELS are finite log-probs
ZERO_CODE = 65535  # probability exactly zero
ENCODING = {
    "code": "log-companded uint16, anchored at the top log-prob",
    "a": A,
    "levels": LEVELS,
    "error_bound": "(x + a) * (exp(ln(1 + R/a) / (2 * levels)) - 1) nats before renormalising, "
    "x = top_logp - logp, R = span",
}
_PREFIX = struct.Struct("<8sII")
_ALIGN = 64


@dataclass(frozen=True)
class ReferenceKey:
    """What a cached reference depends on. ``device`` is recorded but not compared: a reference
    computed on another device kind differs only by rounding."""

    model: str  # model fingerprint
    text: str  # text fingerprint
    ctx: int
    windows: int
    selection: str  # how the windows were cut, e.g. "consecutive from the start"
    bos: str  # the resolved BOS choice: "none" or "prepend:<id>" (BosChoice.cache_key)
    dtype: str  # compute dtype of the reference, e.g. "float32"
    device: str = "cpu"  # device kind the reference ran on

    def digest(self) -> str:
        """A short hash of the compared fields (a file name for :func:`cache_path`)."""
        data = {k: v for k, v in asdict(self).items() if k != "device"}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


_MISMATCH = {
    "model": "made from model fingerprint {0}, this model is {1}",
    "text": "made from text fingerprint {0}, this text is {1}",
    "ctx": "made with ctx {0}, this evaluation uses ctx {1}",
    "windows": "holds {0} windows, this evaluation uses {1}",
    "selection": "windows selected as {0!r}, this evaluation selects {1!r}",
    "bos": "made with BOS {0!r}, this evaluation uses {1!r} (--bos)",
    "dtype": "reference computed in dtype {0}, this evaluation asks for {1}",
}


def cache_path(directory: Path, key: ReferenceKey) -> Path:
    """The file for ``key`` under ``directory``: ``ref-<model[:12]>-<digest>.lbref``."""
    return Path(directory) / f"ref-{key.model[:12]}-{key.digest()}.lbref"


def encode_logprobs(logp: torch.Tensor) -> dict[str, np.ndarray]:
    """Encode normalised log-probs ``logp`` (T, V) (nats; ``-inf`` allowed, NaN not) on their
    own device. Returns, on the CPU, ``argmax`` (T,) int32, ``top_logp`` (T,) float32, ``span``
    (T,) float32 nats and ``codes`` (T, V) uint16."""
    logp = logp.float()
    argmax = logp.argmax(-1)
    top = logp.gather(1, argmax[:, None])
    x = top - logp  # >= 0; +inf where the probability is zero
    zero = torch.isinf(x)
    span = (x.masked_fill(zero, 0.0) if zero.any() else x).amax(-1, keepdim=True)
    k = torch.log1p(span / A)
    codes = x.div_(A).log1p_().mul_(LEVELS / torch.where(k > 0, k, 1.0)).round_()
    codes.masked_fill_(zero, float(ZERO_CODE)).sub_(32768)  # 0..65535 -> int16, bits ^ 0x8000
    return {
        "argmax": argmax.to(torch.int32).cpu().numpy(),
        "top_logp": top[:, 0].cpu().numpy(),
        "span": span[:, 0].cpu().numpy(),
        "codes": codes.to(torch.int16).cpu().numpy().view(np.uint16) ^ np.uint16(0x8000),
    }


def decode_logprobs(top_logp: torch.Tensor, span: torch.Tensor, codes: np.ndarray) -> torch.Tensor:
    """Log-probs (T, V) float32, renormalised, from ``top_logp`` (T,), ``span`` (T,) nats and
    ``codes`` (T, V) uint16."""
    k = torch.log1p(span[:, None] / A)
    lp = torch.from_numpy(codes.astype(np.float32)).mul_(k / LEVELS).expm1_().mul_(-A)
    lp.add_(top_logp[:, None])
    zero = codes == ZERO_CODE
    if zero.any():
        lp.masked_fill_(torch.from_numpy(zero), -torch.inf)
    return torch.log_softmax(lp, dim=-1)


def decode_error_bound(logp: torch.Tensor) -> torch.Tensor:
    """Bound (T, V), nats, on |decoded - exact| of each entry of ``logp`` (T, V) before the
    decoder renormalises: ``(x + a) * (exp(ln(1 + R/a) / (2L)) - 1)``, ``x = top - logp``."""
    top = logp.amax(-1, keepdim=True)
    x = top - logp
    span = torch.where(torch.isfinite(x), x, 0.0).amax(-1, keepdim=True)
    beta = torch.expm1(torch.log1p(span / A) / (2 * LEVELS))
    return (x + A) * beta


@dataclass(frozen=True)
class ReferenceWindow:
    """One cached window: ``tokens`` (ctx,) int64, decoded ``logp`` (T, V) float32 (nats),
    exact ``argmax`` (T,) int64 and ``target_logp`` (T,) float32."""

    tokens: torch.Tensor
    logp: torch.Tensor
    argmax: torch.Tensor
    target_logp: torch.Tensor

    @property
    def target(self) -> torch.Tensor:
        """The predicted tokens (T,): ``tokens[1:]``."""
        return self.tokens[1:]


def _layout(ctx: int, vocab: int) -> list[tuple[str, str, tuple[int, ...]]]:
    T = ctx - 1
    return [
        ("tokens", "<i4", (ctx,)),
        ("argmax", "<i4", (T,)),
        ("target_logp", "<f4", (T,)),
        ("top_logp", "<f4", (T,)),
        ("span", "<f4", (T,)),
        ("codes", "<u2", (T, vocab)),
    ]


def _record_bytes(ctx: int, vocab: int) -> int:
    return sum(np.dtype(d).itemsize * int(np.prod(s)) for _, d, s in _layout(ctx, vocab))


class ReferenceWriter:
    """Appends windows to an open file; use :func:`write_reference`."""

    def __init__(self, handle: BinaryIO, key: ReferenceKey, vocab: int) -> None:
        if key.ctx < 2 or key.windows < 1 or vocab < 1:
            raise ArtefactError(
                f"cannot cache a reference with ctx {key.ctx}, "
                f"{key.windows} windows and vocabulary {vocab}"
            )
        self.key, self.vocab, self.written = key, vocab, 0
        self._handle = handle
        header = {
            "format": "lowbit reference log-probabilities",
            "version": VERSION,
            **asdict(key),
            "vocab": vocab,
            "tokens_per_window": key.ctx - 1,
            "encoding": ENCODING,
            "record": [[n, d, list(s)] for n, d, s in _layout(key.ctx, vocab)],
            "provenance": {
                "lowbit": __version__,
                "libraries": library_versions(),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        }
        text = json.dumps(header, indent=1).encode()
        text += b" " * (-(_PREFIX.size + len(text)) % _ALIGN)
        handle.write(_PREFIX.pack(MAGIC, VERSION, len(text)) + text)

    def add(self, logp: torch.Tensor, tokens: torch.Tensor) -> None:
        """Append one window: the reference's log-probs ``logp`` (ctx-1, V) (nats, float32)
        predicting ``tokens[1:]`` of the window's token ids ``tokens`` (ctx,) or (1, ctx)."""
        ctx, T, V = self.key.ctx, self.key.ctx - 1, self.vocab
        tokens = tokens.reshape(-1).cpu()
        if tokens.shape != (ctx,) or logp.shape != (T, V):
            raise ArtefactError(
                f"window {self.written}: expected tokens ({ctx},) and log-probs ({T}, {V}), "
                f"got {tuple(tokens.shape)} and {tuple(logp.shape)}"
            )
        if self.written >= self.key.windows:
            raise ArtefactError(
                f"the cache was declared with {self.key.windows} windows; this is one more"
            )
        if torch.isnan(logp).any() or torch.isposinf(logp).any():
            raise ArtefactError(f"reference log-probs of window {self.written} hold NaN or +inf")
        target = tokens[1:].to(logp.device)
        parts = encode_logprobs(logp) | {
            "tokens": tokens.numpy(),
            "target_logp": logp.float().gather(1, target[:, None])[:, 0].cpu().numpy(),
        }
        for name, dtype, _ in _layout(ctx, V):
            self._handle.write(np.ascontiguousarray(parts[name], dtype=dtype).data)
        self.written += 1


@contextlib.contextmanager
def write_reference(
    path: Path, key: ReferenceKey, vocab: int, *, overwrite: bool = False
) -> Iterator[ReferenceWriter]:
    """Yield a writer for ``key.windows`` windows; the file appears at ``path`` only once every
    window has been added and nothing raised (it is written under a temporary name)."""
    with atomic_path(Path(path), overwrite=overwrite) as tmp, open(tmp, "wb") as handle:
        writer = ReferenceWriter(handle, key, vocab)
        yield writer
        if writer.written != key.windows:
            done = f"{writer.written} of {key.windows} windows"
            raise ArtefactError(f"reference cache {path}: {done} written; nothing was saved")
        handle.flush()
        os.fsync(handle.fileno())


class ReferenceCache:
    """A cached reference opened for reading; windows are read one at a time.

    ``expect`` is the key of the evaluation about to run: every compared field must match,
    else :class:`ArtefactError` names the file, the fields and the fix.
    """

    def __init__(
        self, path: Path, expect: ReferenceKey | None = None, *, vocab: int | None = None
    ) -> None:
        self.path = Path(path)
        try:
            self._handle: io.BufferedReader = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise ArtefactError(f"cannot open reference cache {self.path}: {exc}") from exc
        try:
            self.header = self._read_header()
            self._check(expect, vocab)
        except BaseException:
            self._handle.close()
            raise

    def _fail(self, what: str) -> ArtefactError:
        return ArtefactError(f"reference cache {self.path} {what}; delete it to recompute it")

    def _read_header(self) -> dict:
        prefix = self._handle.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
            raise self._fail("is not a lowbit reference cache (no LOWBITRC magic)")
        _, version, n = _PREFIX.unpack(prefix)
        if version != VERSION:
            raise self._fail(f"has layout version {version}; this lowbit reads {VERSION}")
        raw = self._handle.read(n)
        try:
            header = json.loads(raw)
            self.key = ReferenceKey(**{f.name: header[f.name] for f in fields(ReferenceKey)})
            self.vocab, self._body = int(header["vocab"]), _PREFIX.size + n
            self._record = _record_bytes(int(self.key.ctx), self.vocab)
            expected = self._body + int(self.key.windows) * self._record
        except (ValueError, KeyError, TypeError) as exc:
            raise self._fail(f"has a damaged header ({exc})") from exc
        if header.get("encoding") != ENCODING:
            raise self._fail(f"was written with encoding {header.get('encoding')}, not {ENCODING}")
        size = os.fstat(self._handle.fileno()).st_size
        if size != expected:
            raise self._fail(
                f"is {size} bytes, but its header promises {expected} ("
                + ("truncated: an interrupted copy?" if size < expected else "trailing bytes")
                + ")"
            )
        return header

    def _check(self, expect: ReferenceKey | None, vocab: int | None) -> None:
        problems = []
        if expect is not None:
            for name, message in _MISMATCH.items():
                ours, theirs = getattr(self.key, name), getattr(expect, name)
                if ours != theirs:
                    problems.append(f"{name}: " + message.format(ours, theirs))
        if vocab is not None and vocab != self.vocab:
            problems.append(f"vocab: made with vocabulary {self.vocab}, this model has {vocab}")
        if problems:
            raise ArtefactError(
                f"reference cache {self.path} does not match this evaluation: "
                + "; ".join(problems)
                + f". Delete {self.path} to recompute the reference, or pass the options it "
                "was made with"
            )

    def __len__(self) -> int:
        return self.key.windows

    def window(self, i: int) -> ReferenceWindow:
        """Read and decode window ``i`` (0-based)."""
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} of a cache with {len(self)} windows")
        buf = np.empty(self._record, dtype=np.uint8)
        self._handle.seek(self._body + i * self._record)
        if self._handle.readinto(buf.data) != self._record:
            raise self._fail(f"ends inside window {i}")
        parts, offset = {}, 0
        for name, dtype, shape in _layout(self.key.ctx, self.vocab):
            count = int(np.prod(shape))
            parts[name] = np.frombuffer(buf, dtype, count, offset).reshape(shape)
            offset += count * np.dtype(dtype).itemsize
        top, span = (torch.from_numpy(parts[n].astype(np.float32)) for n in ("top_logp", "span"))
        return ReferenceWindow(
            tokens=torch.from_numpy(parts["tokens"].astype(np.int64)),
            logp=decode_logprobs(top, span, parts["codes"]),
            argmax=torch.from_numpy(parts["argmax"].astype(np.int64)),
            target_logp=torch.from_numpy(parts["target_logp"].astype(np.float32)),
        )

    def __iter__(self) -> Iterator[ReferenceWindow]:
        return (self.window(i) for i in range(len(self)))

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ReferenceCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_reference(
    path: Path, expect: ReferenceKey | None = None, *, vocab: int | None = None
) -> ReferenceCache:
    """Open a cached reference, checked against ``expect`` and ``vocab`` when given."""
    return ReferenceCache(path, expect, vocab=vocab)


class ScoreSink(Protocol):
    """Where per-token figures go (``metrics.Accumulator``): lists of (T,) tensors."""

    nll: list[torch.Tensor]
    kl: list[torch.Tensor]
    agree: list[torch.Tensor]
    dp: list[torch.Tensor]


def score_reference(ref: ReferenceWindow, acc: ScoreSink) -> None:
    """The reference's own NLL (T,) nats, exact, as ``metrics.evaluate_models`` records it."""
    acc.nll.append(-ref.target_logp)


_ROWS = 64  # tokens whose KL terms are formed at once (bounds the (rows, V) temporaries)


def check_window(shape: tuple[int, ...], ref: ReferenceWindow, target: torch.Tensor) -> None:
    """Refuses a candidate's log-probs of ``shape`` (T, V) predicting ``target`` (T,) that the
    cached window ``ref`` cannot score: another vocabulary or ctx, or other tokens."""
    if shape != tuple(ref.logp.shape):
        raise ArtefactError(
            f"candidate log-probs {shape} do not match the cached reference "
            f"{tuple(ref.logp.shape)}: another vocabulary or ctx; delete the cache to recompute"
        )
    if not torch.equal(target.cpu(), ref.target):
        raise ArtefactError(
            "the window's tokens differ from the cached reference's (text or tokenizer changed);"
            " delete the cache to recompute the reference"
        )


def kl_rows(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Σ_v p_v (log p_v − log q_v) per row of (T, V) log-probs, ``_ROWS`` rows at a time;
    entries with p_v = 0 contribute nothing."""
    out = torch.empty(ref_logp.shape[0], dtype=ref_logp.dtype, device=ref_logp.device)
    for a in range(0, ref_logp.shape[0], _ROWS):
        r = ref_logp[a : a + _ROWS]
        p = r.exp()
        out[a : a + _ROWS] = torch.where(p > 0, p * (r - logp[a : a + _ROWS]), 0.0).sum(-1)
    return out


def score_cached(
    logp: torch.Tensor, ref: ReferenceWindow, target: torch.Tensor, acc: ScoreSink
) -> None:
    """``metrics._score`` against a cached reference: appends the candidate's NLL (T,), KL
    (T,) nats clamped at 0, top-1 agreement (T,) bool with the exact cached argmax, and
    Δp = p_model(target) - p_ref(target) (T,) with the exact cached target log-prob.

    ``logp`` (T, V) is the candidate's log-probs (nats) predicting ``target`` (T,).
    """
    check_window(tuple(logp.shape), ref, target)
    device = logp.device
    ref_logp = ref.logp.to(device)
    lp_target = logp.gather(1, target.to(device)[:, None])[:, 0]
    acc.nll.append(-lp_target)
    acc.kl.append(kl_rows(ref_logp, logp).clamp_min_(0.0))
    acc.agree.append(ref.argmax.to(device) == logp.argmax(-1))
    acc.dp.append(lp_target.exp() - ref.target_logp.to(device).exp())
