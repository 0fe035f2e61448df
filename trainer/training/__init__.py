"""Training: the steps, their order and schedule, and how long a run lasts."""
