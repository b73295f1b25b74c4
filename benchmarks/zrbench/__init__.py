"""The zombiereaper benchmark suite; run it with ``python benchmarks/run.py``."""
