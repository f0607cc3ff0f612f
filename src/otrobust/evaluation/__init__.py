"""Evaluation: accuracy under attack with per-example verdicts and intervals, and the robustness audit."""
