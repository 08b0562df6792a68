"""evoprune: structured pruning of causal LMs found by search."""
