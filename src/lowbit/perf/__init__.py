"""The performance model: hardware specs as data, per-operator FLOPs and bytes from a model's
config and a plan, rooflines, parallelism, and measured profiles to check them against."""
