"""Benchmark adapters: one module per data set family, all yielding :class:`EvalItem`.

Each is chosen from config (``conf/benchmark/<name>.yaml`` names its class with
``_target_``); nothing dispatches on names or paths.
"""

from medgpt_oss.eval.benchmarks.base import Benchmark, BenchmarkLayoutError, EvalItem, MalformedItem

__all__ = ["Benchmark", "BenchmarkLayoutError", "EvalItem", "MalformedItem"]
