"""Numbers: quantization formats, granularity, exact packing, honest bits per weight."""

from lowbit._registry import Registry
from lowbit.formats.granularity import Granularity, PerChannel, PerGroup, PerTensor, group_index
from lowbit.formats.integer import IntFormat, choose_qparams
from lowbit.formats.tensor import QuantizedWeight, describe_scheme

FORMATS: Registry[type] = Registry("format")
FORMATS.register("int", IntFormat)

__all__ = [
    "FORMATS",
    "Granularity",
    "IntFormat",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "QuantizedWeight",
    "choose_qparams",
    "describe_scheme",
    "group_index",
]
