"""The second-order (OBS) database: per-module compression levels with reconstructed weights.

`calibration` collects the layer statistics (Hessians of the inputs), `solver` removes structures
and updates the remaining weights (Optimal Brain Surgeon), `levels` / `module_levels` choose the
compression ladder, `database` builds, stores and reads it layer by layer. A component: it knows
nothing of the searches that use it (DarwinLM in `darwinlm/`, and later whittle).
"""
