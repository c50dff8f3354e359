"""Exporters: the quantized model lowbit evaluated, written in the layouts serving engines load
(compressed-tensors for vLLM, GGUF for llama.cpp), with proof that the weights are unchanged."""

from lowbit.export.common import ExportInput, ExportOptions, ExportReport, Target

__all__ = ["ExportInput", "ExportOptions", "ExportReport", "Target"]
