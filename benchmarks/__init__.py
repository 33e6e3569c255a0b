"""Side-by-side benchmarks of the stack against plain baselines on the same machine."""
