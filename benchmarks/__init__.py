"""Benchmarks of caskax against hand-written JAX and caskade (see run.py)."""
