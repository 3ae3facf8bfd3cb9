"""nnsight interpretability on GAR (attribution patching, heads, probes)."""
