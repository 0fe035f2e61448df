"""Checkpoints and the model folder a run owns."""
