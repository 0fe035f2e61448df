"""Evaluation: logits, test-time augmentation, scores and validation of a network."""
