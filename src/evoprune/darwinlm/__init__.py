"""DarwinLM (training-aware evolutionary structured pruning, Tang et al. 2025) as one workflow.

Over the second-order database of `obs/`: a cost table (`budget`, `latency_table`, `llamacpp_latency`),
replace-one scores and the MIP assembly (`replace_one`, `assemble`), level-switch evolution with
training-aware selection (`genotype`, `mutation`, `evolution`, `fitness`, `survivors`,
`distributed_fitness`, `state`), and the pipeline that runs them and writes the run
(`pipeline`, `report`).
"""
