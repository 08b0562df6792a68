"""whittle (multi-objective sub-network search, Wistuba et al. 2025) as one workflow.

Importance-sorted sub-networks (`importance`, `space`), optional weight-sharing supernet training
(`supernet/`), samplers over two or three objectives (`study`, `local_search`,
`resumable_samplers`, `objectives`), the Pareto front and its pick (`pareto`, `pick`), and the
pipeline that runs them and writes the run (`pipeline`, `arguments`, `run_settings`).
"""
