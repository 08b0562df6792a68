"""When evaluation runs layer by layer (`eval.streamed`): always, never, or when the weights crowd the memory.

auto streams a model whose weight bytes exceed half of the memory available now (`MemAvailable`
in /proc/meminfo, which counts the page cache of memory-mapped weights as available). A whole-model
forward needs every layer resident at once for every batch; past that point the kernel evicts and
rereads the file for each batch, while the layer-by-layer path reads each layer once. Below it both
give the same numbers (to float rounding) and the whole-model path is kept.
"""

from __future__ import annotations

import logging

from torch import nn

from ..memory import AUTO_FRACTION, mem_available
from .latency import weights_nbytes

log = logging.getLogger(__name__)

STREAMED_SETTINGS = (True, False, "auto")


def use_streamed(setting: bool | str, model: nn.Module, available: int | None = None) -> bool:
    """Whether to evaluate `model` layer by layer under `eval.streamed` = `setting`.

    Args:
        setting: True, False or "auto" (see the module docstring).
        model: the model to evaluate.
        available: bytes of memory available (default: `mem_available()`); auto never streams when unknown.
    """
    if setting not in STREAMED_SETTINGS:
        raise ValueError(f"eval.streamed must be true, false or auto, got {setting!r}")
    if setting != "auto":
        return bool(setting)
    available = mem_available() if available is None else available
    weights = weights_nbytes(model)
    streamed = available is not None and weights > AUTO_FRACTION * available
    if streamed:
        log.info("evaluating layer by layer: %.2f GiB of weights, %.2f GiB of memory available",
                 weights / 2**30, available / 2**30)
    return streamed
