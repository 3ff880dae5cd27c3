"""Training and evaluation: WFDB loading, the training loop, linear baselines, metrics."""
