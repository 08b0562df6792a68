"""The sequential re-fit tests, run again on a tiny Phi-3 (fused projections, every target) and a tiny OLMo-2 (norms
after the blocks: the self and dense targets; the residual target is refused in one line)."""

from __future__ import annotations

import pytest

from evoprune.arch.adapter import adapter_for
from evoprune.errors import UserError
from evoprune.obs.refit import check_target
from evoprune_tests import CASES_BY_ID

from .test_refit import (  # noqa: F401  (collected again here, on Phi-3)
    test_a_dropped_layer_pairs_every_later_layer_with_its_own_dense_layer,
    test_an_unpruned_model_is_left_as_it_is,
    test_every_module_of_a_pruned_model_moves_towards_its_target,
)

OLMO2 = CASES_BY_ID["olmo2-mha-bias-tied"]


@pytest.fixture
def tiny_case():
    return CASES_BY_ID["phi3-gqa"]


@pytest.mark.parametrize("target", ["self", "dense"])
def test_olmo2_refit(target):
    test_an_unpruned_model_is_left_as_it_is(OLMO2.build(), target)
    test_every_module_of_a_pruned_model_moves_towards_its_target(OLMO2.build(), target)


def test_olmo2_dropped_layer_refit():
    test_a_dropped_layer_pairs_every_later_layer_with_its_own_dense_layer(OLMO2.build())


def test_olmo2_residual_target_is_refused_in_one_line():
    adapter = adapter_for(OLMO2.config())
    with pytest.raises(UserError, match="olmo2 normalizes each block's output") as info:
        check_target("residual", adapter)
    assert "\n" not in str(info.value)
    for target in ("none", "self", "dense"):
        check_target(target, adapter)
    check_target("residual", adapter_for(CASES_BY_ID["phi3-gqa"].config()))
