"""DarwinLM (training-aware evolutionary structured pruning, Tang et al. 2025) as one workflow.

Over the second-order database of `obs/` and the genotypes, cost tables, replace-one scores and MIP assembly
of `levels/` (shared with nas over the database): latency cost tables (`latency_table`, `llamacpp_latency`),
level-switch evolution with training-aware selection (`mutation`, `evolution`, `fitness`, `survivors`,
`distributed_fitness`, `state`), and the pipeline that runs them and writes the run (`pipeline`, `report`).
"""
