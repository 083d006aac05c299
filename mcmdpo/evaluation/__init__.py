"""Evaluation: generation, benchmarks, metrics, scoring and the assets they need."""
