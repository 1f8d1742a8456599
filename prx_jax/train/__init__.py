"""Training: optimizers, EMA, train state, step and loop."""
