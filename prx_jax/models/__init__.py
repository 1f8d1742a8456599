"""Flax NNX models: the PRX denoiser (and, later, the frozen towers)."""
