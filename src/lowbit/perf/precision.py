"""A plan's bits per weight, linear by linear, for the performance model (no weights read)."""

from __future__ import annotations

from lowbit.errors import ConfigError
from lowbit.perf.operators import Precision
from lowbit.perf.shape import ModelShape
from lowbit.plan import Plan

BITS = {"fp32": 32, "tf32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "fp4": 4}
_COMPUTE_OF_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def compute_of_dtype(dtype: str) -> str:
    """The performance model's name of a runtime compute dtype (``bfloat16`` → ``bf16``)."""
    if dtype not in _COMPUTE_OF_DTYPE:
        raise ConfigError(
            f"no performance-model dtype for {dtype!r}; use one of {', '.join(_COMPUTE_OF_DTYPE)}"
        )
    return _COMPUTE_OF_DTYPE[dtype]


def precision_for(
    shape: ModelShape,
    plan: Plan | None,
    *,
    dense_bits: int = 16,
    act_bits: int | None = None,
    kv_bits: int | None = None,
    compute: str | None = None,
) -> Precision:
    """Weights at the plan's bits per weight (scales, zero points and saved permutations
    counted), layers the plan keeps at ``dense_bits``. A plan naming layers this model lacks is
    refused (it is a plan for another model). Activation and KV-cache bits default to the
    plan's ``activations`` and ``kv_cache`` formats (16 without them); an explicit value that
    contradicts the plan is refused. FP8 activations with ≤ 8-bit weights compute in fp8."""
    act_bits = _plan_bits(plan, "activations", act_bits, "--act-bits")
    kv_bits = _plan_bits(plan, "kv_cache", kv_bits, "--kv-bits")
    for name, bits in (("dense", dense_bits), ("activation", act_bits), ("KV-cache", kv_bits)):
        if bits not in (4, 8, 16, 32):
            raise ConfigError(f"{name} bits must be 4, 8, 16 or 32, got {bits}")
    weight_bits: dict[str, float] = {}
    if plan is not None:
        sizes = dict(shape.named_linears())
        try:
            specs = plan.resolve(list(sizes))
        except ConfigError as exc:
            raise ConfigError(f"the plan does not fit this model: {exc}") from exc
        for name, spec in specs.items():
            lin = sizes[name]
            weight_bits[name] = (
                dense_bits
                if spec is None
                else spec.bits_per_weight(lin.out_features, lin.in_features)
            )
    chosen = compute or auto_compute(weight_bits, dense_bits, act_bits)
    if compute is None and chosen == "int8" and _float_activations(plan):
        chosen = "fp8"
    if chosen not in BITS:
        raise ConfigError(f"compute dtype {chosen!r} is not one of {', '.join(BITS)}")
    return Precision(weight_bits, float(dense_bits), act_bits, kv_bits, chosen)


def auto_compute(weight_bits: dict[str, float], dense_bits: int, act_bits: int) -> str:
    """The operand dtype of the matmuls: fp32 for fp32 activations; int8 when activations and
    every weight are at most 8 bits (W8A8, W4A8); otherwise fp16 (weight-only quantized
    weights are dequantized to the activations' dtype on the fly)."""
    if act_bits >= 32:
        return "fp32"
    weights = list(weight_bits.values()) or [dense_bits]
    if act_bits <= 8 and max(weights) <= 9:  # 8-bit codes plus their scales
        return "int8"
    return "fp16"


def _plan_bits(plan: Plan | None, field: str, given: int | None, option: str) -> int:
    """``given`` bits, else the bits of the plan's ``field`` spec, else 16."""
    spec = None if plan is None else getattr(plan, field, None)
    if spec is None:
        return 16 if given is None else given
    if given is not None and given != spec.bits:
        raise ConfigError(
            f"{option} {given} contradicts the plan's {field} ({spec.describe()}, {spec.bits} "
            f"bits); drop {option} to use the plan's"
        )
    return int(spec.bits)


def _float_activations(plan: Plan | None) -> bool:
    from lowbit.formats import FloatFormat

    spec = None if plan is None else plan.activations
    return spec is not None and isinstance(spec.fmt, FloatFormat)
