"""The BOS policy of evaluation and calibration windows: ``auto``, ``always`` or ``never``.

``auto`` prepends the tokenizer's BOS token to every window when the tokenizer adds one by
default, i.e. when ``tokenizer("x")["input_ids"]`` (special tokens on) starts with
``tokenizer.bos_token_id`` and is longer than the text's own ids. That is how llama.cpp's
perplexity decides (it prepends BOS to each chunk when the vocabulary says ``add_bos``).
``always`` prepends it whatever the tokenizer does by default, and needs a BOS token;
``never`` cuts windows from the text alone. No other special token (EOS) is ever added.

A policy is resolved once per tokenizer to a :class:`BosChoice` (the policy asked, and the
token prepended or none), which the windows carry, every result states and the reference
cache key records (:attr:`BosChoice.cache_key`). Torch-free, so that a configuration can
validate its policy with :func:`check_policy` cheaply. How windows are cut with a BOS token:
:mod:`lowbit.evaluation.text`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

from lowbit.errors import ConfigError

BosPolicy = Literal["auto", "always", "never"]
BOS_POLICIES: tuple[BosPolicy, ...] = ("auto", "always", "never")
PROBE_TEXT = "x"  # what a tokenizer is asked to encode to see whether it adds BOS by default


@dataclass(frozen=True)
class BosChoice:
    """A resolved BOS policy: ``policy`` as asked, ``token_id`` the id prepended to every
    window (None: no BOS). The default is the choice of hand-made windows: no BOS."""

    policy: BosPolicy = "never"
    token_id: int | None = None

    @property
    def prepend(self) -> bool:
        return self.token_id is not None

    @property
    def cache_key(self) -> str:
        """What the reference cache key records: ``"none"`` or ``"prepend:<id>"``. Only the
        concrete choice counts (``auto`` and ``always`` resolving alike give the same key)."""
        return "none" if self.token_id is None else f"prepend:{self.token_id}"

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "bos": self.prepend, "token_id": self.token_id}


NO_BOS = BosChoice()  # windows cut from the text alone (the default of windows made by hand)


def check_policy(policy: str) -> BosPolicy:
    """``policy`` as a :data:`BosPolicy`, or a ConfigError listing the valid ones."""
    if policy not in BOS_POLICIES:
        raise ConfigError(f"unknown BOS policy {policy!r} (--bos); use {', '.join(BOS_POLICIES)}")
    return cast(BosPolicy, policy)


def adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` puts its BOS token first when it encodes a text by default."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    with_special = tokenizer(PROBE_TEXT, return_attention_mask=False)["input_ids"]
    plain = tokenizer(PROBE_TEXT, add_special_tokens=False, return_attention_mask=False)
    return len(with_special) > len(plain["input_ids"]) and with_special[0] == bos


def resolve_bos(tokenizer: Any, policy: str, what: str) -> BosChoice:
    """The concrete choice of ``policy`` for ``tokenizer`` (``what``: the tokenizer's name in
    errors, e.g. "the tokenizer of smollm2-135m")."""
    policy = check_policy(policy)
    bos = getattr(tokenizer, "bos_token_id", None)
    if policy == "never":
        return BosChoice(policy, None)
    if policy == "always":
        if bos is None:
            raise ConfigError(
                f"--bos always needs a BOS token, but {what} "
                f"({type(tokenizer).__name__}) has none (bos_token_id is None); "
                "use --bos auto or --bos never"
            )
        return BosChoice(policy, int(bos))
    return BosChoice(policy, int(bos) if bos is not None and adds_bos(tokenizer) else None)
