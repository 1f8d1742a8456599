"""Sampling, export of complete diffusers pipelines with a model card, and Hub upload."""
