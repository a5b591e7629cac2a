"""Benchmarks for personalive: quality metrics, the bench runner, tables and the paper's reference numbers."""
