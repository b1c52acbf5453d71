"""Benchmarks: each bench_*.py exposes ``run(workloads, rounds) -> list[Row]`` and ``main()``."""
