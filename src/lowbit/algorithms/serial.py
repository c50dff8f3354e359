"""The typed dict round trip of algorithm configurations used by plans and saved models
(strict: unknown options and wrong types are FieldErrors naming the field)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import Enum
from typing import Any

from lowbit._fields import FieldError, at, check_keys, mapping, typed_kwargs
from lowbit.algorithms.config import (
    AlgorithmConfig,
    AWQConfig,
    GPTQConfig,
    RTNConfig,
    SqueezeLLMConfig,
)
from lowbit.formats import MinMax, clipping_from_dict


def algorithm_to_dict(a: AlgorithmConfig) -> dict[str, Any]:
    """``{"name": ..., **fields}`` (enums by value) through the writer registered for the
    config's type, the generic one by default."""
    return _WRITERS.get(type(a), _fields_to_dict)(a)


def _fields_to_dict(a: AlgorithmConfig) -> dict[str, Any]:
    values = {f.name: getattr(a, f.name) for f in dataclasses.fields(a)}  # type: ignore[arg-type]
    return {"name": a.name, **{k: v.value if isinstance(v, Enum) else v for k, v in values.items()}}


def _rtn_to_dict(a: RTNConfig) -> dict[str, Any]:
    """Plain RTN as ``{"name": "rtn"}``, as plans written before clipping existed have it."""
    if a.clipping == MinMax():
        return {"name": "rtn"}
    return {"name": "rtn", "clipping": a.clipping.to_dict()}


_WRITERS: dict[type, Callable[[Any], dict[str, Any]]] = {RTNConfig: _rtn_to_dict}


def algorithm_from_dict(d: dict[str, Any]) -> AlgorithmConfig:
    name = d.get("name")
    if name == "rtn":
        check_keys(d, ("name", "clipping"), "an RTN algorithm")
        with at("clipping"):
            return RTNConfig(
                clipping_from_dict(mapping(d.get("clipping", {"type": "minmax"}), "clipping"))
            )
    if name == "gptq":
        kwargs = typed_kwargs(GPTQConfig, d, "a GPTQ algorithm", skip=("name",))
        return GPTQConfig(**{"damp": 0.01, "block_size": 128, "act_order": "static", **kwargs})
    if name == "awq":
        return _awq_from_dict(d)
    if name == "squeezellm":
        return _squeezellm_from_dict(d)
    raise FieldError(
        ("name",), f"unknown algorithm {name!r}; known: 'awq', 'gptq', 'rtn', 'squeezellm'"
    )


def _squeezellm_from_dict(d: dict[str, Any]) -> SqueezeLLMConfig:
    return SqueezeLLMConfig(
        **typed_kwargs(SqueezeLLMConfig, d, "a SqueezeLLM algorithm", skip=("name",))
    )


def _awq_from_dict(d: dict[str, Any]) -> AWQConfig:
    return AWQConfig(**typed_kwargs(AWQConfig, d, "an AWQ algorithm", skip=("name",)))
