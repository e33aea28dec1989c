"""Data: prompt pools, benchmarks and the train/eval overlap check."""
