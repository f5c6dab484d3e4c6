"""Training and evaluation engine: distributed setup, checkpoints, the training loop, evaluation."""
