"""Numbers: quantization formats, granularity, clipping, exact packing, honest bits per weight."""

from lowbit.formats.clipping import Clipping, MinMax, MSEClip, Percentile, clipping_from_dict
from lowbit.formats.codebook import NF4_VALUES, LUTFormat, NF4Format
from lowbit.formats.floating import (
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3,
    FP8_E5M2,
    FloatFormat,
)
from lowbit.formats.ggml import GGMLFormat
from lowbit.formats.granularity import Granularity, PerChannel, PerGroup, PerTensor, group_index
from lowbit.formats.integer import IntFormat, choose_qparams
from lowbit.formats.microscaling import MXFormat
from lowbit.formats.nvfp4 import NVFP4Format
from lowbit.formats.quantize import quantize_weight
from lowbit.formats.registry import FORMAT_TYPES, FORMATS, format_from_dict, format_to_dict
from lowbit.formats.tensor import QuantizedWeight, WeightFormat, describe_scheme

__all__ = [
    "FORMATS",
    "FORMAT_TYPES",
    "FP4_E2M1",
    "FP6_E2M3",
    "FP6_E3M2",
    "FP8_E4M3",
    "FP8_E5M2",
    "NF4_VALUES",
    "Clipping",
    "FloatFormat",
    "GGMLFormat",
    "Granularity",
    "IntFormat",
    "LUTFormat",
    "MSEClip",
    "MXFormat",
    "MinMax",
    "NF4Format",
    "NVFP4Format",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "Percentile",
    "QuantizedWeight",
    "WeightFormat",
    "choose_qparams",
    "clipping_from_dict",
    "describe_scheme",
    "format_from_dict",
    "format_to_dict",
    "group_index",
    "quantize_weight",
]
