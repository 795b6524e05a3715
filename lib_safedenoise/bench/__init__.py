"""Benchmarks: ``python -m lib_safedenoise.bench speed ...`` and ``python -m lib_safedenoise.bench efficacy ...``."""
