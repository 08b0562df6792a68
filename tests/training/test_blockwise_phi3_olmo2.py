"""Blockwise local distillation, run again on a tiny Phi-3 (fused projections) and a tiny OLMo-2 (post-norms)."""

from __future__ import annotations

import pytest
from test_blockwise import (  # noqa: F401  (collected again here, on Phi-3 and OLMo-2)
    test_every_layer_moves_towards_the_dense_layer_and_the_weights_rebuild_the_model,
)

from evoprune_tests import CASES_BY_ID

CASES = [CASES_BY_ID["phi3-gqa"], CASES_BY_ID["olmo2-mha-bias-tied"]]


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def tiny_case(request):
    return request.param
