"""Evaluation harness: benchmarks (benchmarks/), answer extraction (extraction), metrics (metrics,
chexpert, clinical), generation, likelihood scoring, the sharded runner, and results writing.
Entry points: ``python -m medgpt_oss.evaluate``, ``python -m medgpt_oss.chat``,
``python -m medgpt_oss.eval.bench_generation``. See docs/evaluation.md.
"""
