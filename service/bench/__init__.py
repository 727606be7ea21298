"""Benchmarks of the serving stack against the official implementation's way of running."""
