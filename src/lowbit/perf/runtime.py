"""How a runtime executes the model's operators: how many framework dispatches (kernel launches
on a GPU) and module calls each operator costs. Multiplied by the hardware's measured cost of
one dispatch and one module call, this is each operator's fixed overhead on top of its roofline
time — what dominates small models and small batches in eager PyTorch.

- ``eager``: Hugging Face transformers' Llama-family modules in eager PyTorch, counted from
  ``modeling_llama.py``: RMSNorm is 8 dispatches (to, pow, mean, add, rsqrt, mul, to, mul);
  rotary embedding 16 (unsqueeze ×2, and per q and k: mul, slice, slice, neg, cat, mul, add);
  the KV-cache update 2 (a cat per K and V); attention 10 (view and transpose of q, k, v,
  scaled_dot_product_attention, transpose, reshape, contiguous); SiLU·mul 2; each residual add
  1; each linear 1 (its GEMM is the roofline part); the head 2 (last-position slice, GEMM).
- ``fused``: one kernel per operator (serving engines: fused norms, rotary and attention).
- ``graphs``: launches captured in CUDA graphs: no per-operator cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit._registry import Registry


@dataclass(frozen=True)
class Runtime:
    name: str
    costs: dict[str, tuple[int, int]]  # operator → (module calls, dispatches)
    default: tuple[int, int] = (0, 1)

    def cost(self, op_name: str) -> tuple[int, int]:
        return self.costs.get(op_name, self.default)


_LINEAR = (1, 1)
EAGER = {
    "embedding": (1, 1),
    "input_norm": (1, 8),
    "post_norm": (1, 8),
    "final_norm": (1, 8),
    "rotary": (0, 16),
    "kv_write": (0, 2),
    "attention": (1, 10),
    "silu_mul": (2, 2),
    "residual_add": (1, 1),
    "lm_head": (1, 2),
    "all_reduce": (0, 1),
    **{n: _LINEAR for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj")},
    "down_proj": _LINEAR,
}

RUNTIMES: Registry[Runtime] = Registry("runtime")
RUNTIMES.register("eager", Runtime("eager", EAGER))
RUNTIMES.register("fused", Runtime("fused", {}, (0, 1)))
RUNTIMES.register("graphs", Runtime("graphs", {}, (0, 0)))
