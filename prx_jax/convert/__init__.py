"""Strict, streaming weight conversion between diffusers/transformers folders and prx_jax."""
