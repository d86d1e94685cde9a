"""leanset benchmarks: synthetic data with planted near-duplicates, stage timings, GPU check."""
