"""Benchmarks: each stage beside its raw baseline in the same run, reported as ratios."""
