"""whittle (automated sub-network search, Sukthanker et al. 2024, arXiv:2410.06479) as one workflow.

Its sub-networks are either the second-order database's levels per module, the kept weights updated by OBS
(`level_space`), or importance-sorted slices (`importance`, `space`) with optional weight-sharing supernet
training (`supernet/`); samplers over two or three objectives (`study`, `local_search`,
`resumable_samplers`, `objectives`), the Pareto front and its pick (`pareto`, `pick`), and the
pipeline that runs them and writes the run (`pipeline`, `arguments`, `run_settings`).
"""
