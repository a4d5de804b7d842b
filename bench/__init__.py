"""Benchmarks: flowq against plain Celery canvas on the same broker, store and worker settings.

Run ``make bench`` (quick) or ``make bench BENCH_MODE=full``; see ``bench/README.md``.
"""
