"""Benchmarks that print tables (not tests): ``python -m bench.engine`` and ``bench.providers``."""
