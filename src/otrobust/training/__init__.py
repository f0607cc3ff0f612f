"""Training: ``TrainConfig``, the objectives (one entry per method), AWP, and the training loop."""
