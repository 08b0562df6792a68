"""The baselines as workflows (`evoprune prune`, `evoprune slice`): the same keep-ratio in every layer
(`uniform`), ShortGPT layer removal (`depth`), or a saved SubnetSpec; `pipeline` runs them end to end."""
