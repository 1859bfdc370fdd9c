"""Commands built on the rest: the benchmark, the demo, and text metrics (perplexity, bits per character)."""
