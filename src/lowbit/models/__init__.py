"""Model-aware code: sources, architecture specs, block-by-block quantization, saving."""
