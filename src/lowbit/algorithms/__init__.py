"""One weight at a time: RTN, GPTQ and their streaming statistics, as pure functions."""

from lowbit._registry import Registry
from lowbit.algorithms.config import ActOrder, AlgorithmConfig, GPTQConfig, RTNConfig
from lowbit.algorithms.gptq import GPTQResult, check_gptq_format, gptq_quantize
from lowbit.algorithms.hessian import HessianAccumulator
from lowbit.algorithms.rtn import rtn_quantize

ALGORITHMS: Registry[type] = Registry("algorithm")
ALGORITHMS.register("rtn", RTNConfig)
ALGORITHMS.register("gptq", GPTQConfig)

__all__ = [
    "ALGORITHMS",
    "ActOrder",
    "AlgorithmConfig",
    "GPTQConfig",
    "GPTQResult",
    "HessianAccumulator",
    "RTNConfig",
    "check_gptq_format",
    "gptq_quantize",
    "rtn_quantize",
]
