"""One weight at a time: RTN, GPTQ, SqueezeLLM and their streaming statistics, as pure
functions."""

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
    SqueezeLLMConfig,
)
from lowbit.algorithms.gptq import GPTQResult, check_gptq_format, gptq_quantize
from lowbit.algorithms.hessian import HessianAccumulator
from lowbit.algorithms.rtn import rtn_quantize
from lowbit.algorithms.smoothquant import smoothquant_scales, weight_absmax
from lowbit.algorithms.squeezellm import check_squeezellm_format, squeezellm_quantize

ALGORITHMS: Registry[type] = Registry("algorithm")
ALGORITHMS.register("rtn", RTNConfig)
ALGORITHMS.register("gptq", GPTQConfig)
ALGORITHMS.register("squeezellm", SqueezeLLMConfig)
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
    "SqueezeLLMConfig",
    "awq_quantize",
    "check_gptq_format",
    "check_squeezellm_format",
    "gptq_quantize",
    "rtn_quantize",
    "search_clip",
    "search_scales",
    "smoothquant_scales",
    "squeezellm_quantize",
    "weight_absmax",
]
