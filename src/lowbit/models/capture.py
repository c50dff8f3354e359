"""Capture what a module receives: the inputs of one decoder block for each chunk of windows."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class _StopForward(Exception):
    pass


def capture_inputs(
    model: nn.Module, module: nn.Module, ids: torch.Tensor, chunk_size: int
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Hidden states and keyword arguments that ``module`` (a block of ``model``) receives for
    each chunk of ``ids`` (n, ctx); the forward stops there, so later modules may be unloaded."""
    captured: list[tuple[torch.Tensor, dict[str, Any]]] = []

    def hook(mod: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _StopForward

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            for chunk in torch.split(ids, chunk_size):
                try:
                    model(input_ids=chunk, use_cache=False)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return [h for h, _ in captured], [k for _, k in captured]
