"""A random.Random's state as JSON, for run states that resume with the same random numbers."""

from __future__ import annotations

import random


def restore_rng(state: list) -> random.Random:
    """The random.Random whose state `rng_state` saved as JSON."""
    rng = random.Random()
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))
    return rng


def rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]
