"""Experiments: the paper's presets and our studies as data, their planning and cost, and ``reproduce``."""
