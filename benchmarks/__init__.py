"""Benchmarks: each bench_*.py exposes ``run(workloads, rounds) -> list[Row]``; run as a script, it calls ``common.main(run, ...)``."""
