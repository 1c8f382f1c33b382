"""Benchmarks: each `python -m bench.<name>` prints a table and rewrites its own section of docs/BENCHMARKS.md.

The machines are shared and noisy, so every speed claim is either a ratio to a baseline measured in the
same run or a median over repeats with its spread.
"""
