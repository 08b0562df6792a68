"""Genotypes over the second-order database's levels, their cost, and the MIP assembly of replace-one scores.

A component shared by the searches over the database (`darwinlm/` and `whittle/`'s database space): a genotype
is one level per attention and MLP module (`genotype`), a cost table counts it in parameters, FLOPs or
latency and a budget bounds it (`budget`), the replace-one scores are the KL of the dense model with one
module at one level, kept beside the database (`replace_one`), and the MIP assembly (Puzzle) is the genotype
inside a budget whose summed scores are least (`assemble`). It knows nothing of the workflows that use it.
"""
