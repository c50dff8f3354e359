"""The typed dict round trip of algorithm configurations used by plans and saved models
(strict: unknown options and wrong types are FieldErrors naming the field)."""

from __future__ import annotations

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
    if isinstance(a, GPTQConfig):
        return {
            "name": "gptq",
            "damp": a.damp,
            "block_size": a.block_size,
            "act_order": a.act_order.value,
        }
    if isinstance(a, SqueezeLLMConfig):
        return {
            "name": "squeezellm",
            "outlier_fraction": a.outlier_fraction,
            "iterations": a.iterations,
            "tol": a.tol,
            "sensitivity": a.sensitivity,
        }
    if isinstance(a, AWQConfig):
        return {
            "name": "awq",
            "grid": a.grid,
            "clip": a.clip,
            "n_clip_grid": a.n_clip_grid,
            "max_shrink": a.max_shrink,
        }
    if isinstance(a.clipping, MinMax):  # the default: plans written before clipping existed
        return {"name": "rtn"}
    return {"name": "rtn", "clipping": a.clipping.to_dict()}


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
