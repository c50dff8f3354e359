"""One weight at a time: RTN, GPTQ and their streaming statistics, as pure functions."""

from lowbit._registry import Registry
from lowbit.algorithms.awq import ScaleSearch, ScaleTarget, awq_quantize, search_clip, search_scales
from lowbit.algorithms.channel_stats import ChannelStats
from lowbit.algorithms.config import (
    ActOrder,
    AlgorithmConfig,
    AWQConfig,
    GPTQConfig,
    RTNConfig,
    SmoothQuantConfig,
)
from lowbit.algorithms.gptq import GPTQResult, check_gptq_format, gptq_quantize
from lowbit.algorithms.hessian import HessianAccumulator
from lowbit.algorithms.rtn import rtn_quantize
from lowbit.algorithms.smoothquant import smoothquant_scales, weight_absmax

ALGORITHMS: Registry[type] = Registry("algorithm")
ALGORITHMS.register("rtn", RTNConfig)
ALGORITHMS.register("gptq", GPTQConfig)
ALGORITHMS.register("awq", AWQConfig)

__all__ = [
    "ALGORITHMS",
    "AWQConfig",
    "ActOrder",
    "AlgorithmConfig",
    "ChannelStats",
    "GPTQConfig",
    "GPTQResult",
    "HessianAccumulator",
    "RTNConfig",
    "ScaleSearch",
    "ScaleTarget",
    "SmoothQuantConfig",
    "awq_quantize",
    "check_gptq_format",
    "gptq_quantize",
    "rtn_quantize",
    "search_clip",
    "search_scales",
    "smoothquant_scales",
    "weight_absmax",
]
