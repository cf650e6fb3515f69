"""Benchmarks: vpshost against the raw tools, in the same run, as ratios."""
