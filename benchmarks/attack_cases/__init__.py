"""Case tables and fixtures of ``python -m benchmarks.attack``."""
