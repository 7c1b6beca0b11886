"""Flow classes for the benchmarks (rewritten by ``transparent_de.install("bench_flows")``)."""
