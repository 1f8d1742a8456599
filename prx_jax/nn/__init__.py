"""Generic layers (linear, norms, embeddings, RoPE, attention). They know nothing of PRX."""
