"""Shared core: preprocessing, the model, checkpoints and inference (numpy in, numpy out)."""
