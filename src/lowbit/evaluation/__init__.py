"""Evaluation: text sources, token windows, perplexity, KL divergence and agreement."""
