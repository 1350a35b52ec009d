"""Benchmarks that print ratios: `python -m benchmarks.decode`, `benchmarks.moe`, `benchmarks.train`."""
