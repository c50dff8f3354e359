"""Where it hurts: per-layer sensitivity to quantization, measured and by cheap proxies."""

from lowbit.sensitivity.table import METRICS, Entry, LayerInfo, SensitivityTable, check_menu

__all__ = ["METRICS", "Entry", "LayerInfo", "SensitivityTable", "check_menu"]
